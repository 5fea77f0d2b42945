import importlib


class UnknownArchitectureError(ValueError):
    pass


class ArchitectureRegistry:
    """HF architecture names (config.architectures) -> "module:Class", imported only on use."""

    def __init__(self, targets: dict[str, str], owners: dict[str, str] | None = None,
                 conflicts: list[str] | None = None):
        self.targets = dict(targets)
        self.owners = owners or {}
        self.conflicts = conflicts or []

    def names(self) -> list[str]:
        return sorted(self.targets)

    def resolve(self, architectures: list[str] | None):
        for arch in architectures or []:
            if arch in self.targets:
                return self._import(arch)
        raise UnknownArchitectureError(
            f"unsupported architecture {architectures!r}; supported: {', '.join(self.names()) or 'none'}"
            " (install a plugin that provides it: corral plugins install PKG)")

    def _import(self, arch: str):
        target = self.targets[arch]
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # the plugin's model module is missing or broken
            raise UnknownArchitectureError(f"plugin {self.owners.get(arch)} registered {arch} as {target}, but "
                                           f"importing {module_name} failed: {type(e).__name__}: {e}") from e
        try:
            return getattr(module, class_name)
        except AttributeError:
            raise UnknownArchitectureError(f"plugin {self.owners.get(arch)} registered {arch} as {target}, "
                                           f"but {module_name} has no {class_name}") from None
