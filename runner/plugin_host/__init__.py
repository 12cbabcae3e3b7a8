"""The host side of plugins, as pytest and datasette are pluggy hosts: the hookspecs, a plugin's
declaration (runner.Plugin, runner.setting), the catalogue that finds and validates plugins, and
calling a spec's enabled plugins with their own settings and state (hooks.py).
"""
