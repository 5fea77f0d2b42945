import importlib.metadata
import logging
import os
from dataclasses import dataclass, field

import pluggy

from corral.registry import hookspecs
from corral.registry.architectures import ArchitectureRegistry
from corral.registry.conflicts import Registration, pick_winners

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "corral"
BUILTIN_PREFIX = "corral.plugins."


@dataclass(slots=True)
class PluginInfo:
    name: str
    module: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.module.startswith(BUILTIN_PREFIX)


class PluginManager:
    """Loads the `corral` entry points (built-ins included) and collects what they register.

    `allow` (env CORRAL_PLUGINS, comma-separated entry-point names) limits which load; a plugin
    that fails to import is recorded with its error and skipped. `trace` (CORRAL_TRACE_PLUGINS)
    logs every hook call.
    """

    def __init__(self, allow: list[str] | None = None, trace: bool | None = None, load_entry_points: bool = True):
        if allow is None and os.environ.get("CORRAL_PLUGINS"):
            allow = [n.strip() for n in os.environ["CORRAL_PLUGINS"].split(",") if n.strip()]
        if trace is None:
            trace = os.environ.get("CORRAL_TRACE_PLUGINS", "") not in ("", "0", "false")
        self.allow = allow
        self.trace = trace
        self.pm = pluggy.PluginManager("corral")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self):
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if self.allow is not None and ep.name not in self.allow:
                continue
            if ep.name in self.infos:
                continue
            version = ep.dist.version if ep.dist else None
            info = PluginInfo(name=ep.name, module=ep.value, version=version)
            self.infos[ep.name] = info
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as e:  # a broken plugin never takes corral down
                info.error = f"{type(e).__name__}: {e}"
                logger.warning("plugin %s failed to load and was skipped: %s", ep.name, info.error)
                continue
            info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])

    def register(self, plugin, name: str, module: str | None = None):
        """Register a plugin object directly (tests, embedding applications)."""
        self.pm.register(plugin, name=name)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.infos[name] = PluginInfo(name=name, module=module or name, version=None, hooks=hooks)

    def unregister(self, name: str):
        self.pm.unregister(name=name)
        self.infos.pop(name, None)

    def plugins(self) -> list[PluginInfo]:
        return list(self.infos.values())

    def collect(self, hook_name: str) -> list[Registration]:
        """Call `hook_name` on every plugin with a register(key, value) callback."""
        registrations: list[Registration] = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            name = impl.plugin_name
            info = self.infos.get(name)
            builtin = info.builtin if info else False

            def register(key, value, _plugin=name, _builtin=builtin):
                if self.trace:
                    logger.info("plugin %s: %s(%r, %r)", _plugin, hook_name, key, value)
                registrations.append(Registration(key, value, _plugin, _builtin))

            if self.trace:
                logger.info("calling %s on plugin %s", hook_name, name)
            try:
                impl.function(register=register)
            except Exception as e:
                if info:
                    info.error = f"{hook_name} failed: {type(e).__name__}: {e}"
                logger.warning("plugin %s failed in %s: %s", name, hook_name, e)
        return registrations

    def registrations(self, hook_name: str) -> tuple[dict, list[str]]:
        """Winners per key and human-readable conflict reports."""
        return pick_winners(self.collect(hook_name))

    def architectures(self) -> ArchitectureRegistry:
        winners, conflicts = self.registrations("register_architectures")
        return ArchitectureRegistry({k: r.value for k, r in winners.items()},
                                    {k: r.plugin for k, r in winners.items()}, conflicts)
