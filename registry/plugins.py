import importlib.metadata
import logging
import os
import re
from dataclasses import dataclass, field

import pluggy

from corral.registry import hookspecs
from corral.registry.architectures import ArchitectureRegistry
from corral.registry.conflicts import Registration, pick_winners
from corral.registry.tool_parsers import ToolParserRegistry, ToolParserTarget

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "corral"
BUILTIN_PREFIX = "corral.plugins."


TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # "module:Class"


def is_target(value) -> bool:
    return isinstance(value, str) and bool(TARGET.fullmatch(value))


# what each hook's register(key, value) takes as the value, and how to say so
EXPECTED = {
    "register_architectures": (is_target, 'a "module:Class" string'),
    "register_sources": (callable, "a source class"),
    "register_tool_parsers": (is_target, 'a "module:Class" string'),
}
# hooks whose register() also takes keyword options: what it keeps of (value, **options)
OPTIONS = {"register_tool_parsers": ToolParserTarget}


def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


@dataclass(slots=True)
class PluginInfo:
    name: str
    module: str
    version: str | None
    package: str | None = None  # the distribution that declares the entry point
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    enabled: bool = True  # False: CORRAL_PLUGINS leaves it out

    def fail(self, message: str):
        if message not in (self.error or ""):  # hooks are called again by each registry built
            self.error = f"{self.error}; {message}" if self.error else message

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
        self.infos: dict[str, PluginInfo] = {}  # the plugins that load (or failed to import)
        self.skipped: list[PluginInfo] = []  # left out by CORRAL_PLUGINS, or shadowed by one of the same name
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self):
        # one plugin per entry-point name: a built-in keeps its name, else the package that sorts first
        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda ep: (ep.name, not ep.value.startswith(BUILTIN_PREFIX), _package(ep) or ""))
        for ep in eps:
            info = PluginInfo(name=ep.name, module=ep.value, version=ep.dist.version if ep.dist else None,
                              package=_package(ep))
            if self.allow is not None and ep.name not in self.allow:
                info.enabled = False
                self.skipped.append(info)
                continue
            if ep.name in self.infos:
                holder = self.infos[ep.name]
                info.error = (f"not loaded: {holder.package or holder.module} already has a plugin named "
                              f"{ep.name!r} ({holder.module}); rename this entry point")
                logger.warning("plugin %s from %s: %s", ep.name, info.package, info.error)
                self.skipped.append(info)
                continue
            self.infos[ep.name] = info
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except (Exception, SystemExit) as e:  # a broken plugin never takes corral down
                info.error = one_line(e)
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
        """Call `hook_name` on every plugin with a register(key, value) callback. A registration of the
        wrong kind is refused and a hook that raises keeps nothing; both are recorded as the plugin's error."""
        registrations: list[Registration] = []
        valid, expected = EXPECTED.get(hook_name, (lambda value: True, ""))
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            name = impl.plugin_name
            info = self.infos.get(name) or PluginInfo(name=name, module=name, version=None)
            mine: list[Registration] = []

            def register(key, value, _plugin=name, _info=info, _mine=mine, **options):
                if self.trace:
                    logger.info("plugin %s: %s(%r, %r%s)", _plugin, hook_name, key, value,
                                "".join(f", {k}={v!r}" for k, v in options.items()))
                message = None
                if not (isinstance(key, str) and key) or not valid(value):
                    message = f"{hook_name}: register({key!r}, {value!r}) refused: it takes a name and {expected}"
                elif hook_name in OPTIONS:
                    try:
                        value = OPTIONS[hook_name](value, **options)
                    except TypeError as e:
                        message = f"{hook_name}: register({key!r}, {value!r}, ...) refused: {e}"
                elif options:
                    message = f"{hook_name}: register({key!r}, {value!r}, ...) refused: it takes no options"
                if message:
                    _info.fail(message)
                    logger.warning("plugin %s: %s", _plugin, message)
                    return
                _mine.append(Registration(key, value, _plugin, _info.builtin))

            if self.trace:
                logger.info("calling %s on plugin %s", hook_name, name)
            try:
                impl.function(register=register)
            except (Exception, SystemExit) as e:
                info.fail(f"{hook_name} failed: {one_line(e)}")
                logger.warning("plugin %s failed in %s and was skipped: %s", name, hook_name, one_line(e))
                continue
            registrations += mine
        return registrations

    def registrations(self, hook_name: str) -> tuple[dict, list[str]]:
        """Winners per key and human-readable conflict reports."""
        return pick_winners(self.collect(hook_name))

    def architectures(self) -> ArchitectureRegistry:
        winners, conflicts = self.registrations("register_architectures")
        return ArchitectureRegistry({k: r.value for k, r in winners.items()},
                                    {k: r.plugin for k, r in winners.items()}, conflicts)

    def tool_parsers(self) -> ToolParserRegistry:
        return ToolParserRegistry(self.collect("register_tool_parsers"))


def _package(ep: importlib.metadata.EntryPoint) -> str | None:
    return ep.dist.name if ep.dist else None
