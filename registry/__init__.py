"""Plugin hooks, the plugin manager, and the registries plugins fill."""
