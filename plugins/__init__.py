"""Built-in plugins. Each is declared as an entry point in pyproject.toml, like any other."""
