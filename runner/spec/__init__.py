"""What a spec is: the schema of every key (schema.py) and reading spec files: `extends`, `--set`
overrides, sweeps' expansion, validation against the plugins' tables (loading.py).
Imports only the foundation (errors, artifacts); the plugin catalogue is passed in, never imported.
"""
