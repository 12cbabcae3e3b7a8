"""Built-in runner plugins, one module each; they register exactly like third-party plugins."""
