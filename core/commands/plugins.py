"""corral plugins: list what is installed; install or uninstall plugin packages with pip, in this environment.

After an install, a fresh process loads the plugins (as every engine process does) and says what each new
package registered, or why it did not: not a corral plugin, an import that fails, a name another plugin holds.
"""
import contextlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from corral.registry.conflicts import pick_winners
from corral.registry.plugins import ENTRY_POINT_GROUP, PluginManager

HOOKS = ("register_architectures", "register_sources", "register_tool_parsers")
RULE = ("when two plugins register one name, a third-party plugin beats a built-in and between third-party "
        "plugins the entry-point name that sorts first wins; CORRAL_PLUGINS=a,b,... chooses by leaving the other out")
PIP_FLAGS = {"upgrade": "--upgrade", "no_deps": "--no-deps", "no_build_isolation": "--no-build-isolation",
             "force_reinstall": "--force-reinstall", "pre": "--pre"}


def add_commands(subparsers):
    parser = subparsers.add_parser(
        "plugins", help="list installed plugins, install or uninstall them",
        description="List the plugins (entry points in group `corral`) with their version, hooks, what each "
                    "registered and any load error. CORRAL_PLUGINS=a,b loads only the named ones; "
                    "CORRAL_TRACE_PLUGINS=1 logs every hook call.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=list_plugins)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    install = actions.add_parser("install", help="pip install plugin packages into corral's environment",
                                 description="Runs pip in the interpreter corral runs in, then checks that each "
                                             "installed package is a corral plugin that loads.")
    install.add_argument("packages", nargs="+", metavar="PKG", help="a requirement (corral-qwen2>=0.1), path or URL")
    install.add_argument("-U", "--upgrade", action="store_true")
    install.add_argument("-e", "--editable", action="store_true", help="install local paths in editable mode")
    install.add_argument("--force-reinstall", action="store_true")
    install.add_argument("--no-deps", action="store_true", help="do not install the packages' dependencies")
    install.add_argument("--no-build-isolation", action="store_true",
                         help="build with the setuptools already installed (offline)")
    install.add_argument("--pre", action="store_true", help="allow pre-releases")
    install.add_argument("-i", "--index-url", help="package index (a mirror) for this install")
    install.set_defaults(handler=install_plugins)
    uninstall = actions.add_parser("uninstall", help="pip uninstall plugin packages")
    uninstall.add_argument("packages", nargs="+", metavar="PKG")
    uninstall.set_defaults(handler=uninstall_plugins)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def describe(pm: PluginManager) -> list[dict]:
    """Each plugin with its package, hooks, what it registered, its load error and its conflicts; plugins
    that CORRAL_PLUGINS leaves out are listed as disabled."""
    registered: dict[str, list[str]] = {}
    conflicts: dict[str, list[str]] = {}
    for hook in HOOKS:
        regs = pm.collect(hook)
        winners, _ = pick_winners(regs)
        holders: dict[str, dict[str, None]] = {}  # key -> the plugins registering it, in order
        for r in regs:
            registered.setdefault(r.plugin, []).append(r.key)
            holders.setdefault(r.key, {})[r.plugin] = None
        for key, plugins in holders.items():
            for plugin in plugins if len(plugins) > 1 else []:
                others = ", ".join(p for p in plugins if p != plugin)
                conflicts.setdefault(plugin, []).append(
                    f"{key!r} is also registered by {others}; {winners[key].plugin} wins")
    out = []
    for p in pm.plugins() + pm.skipped:
        loaded = pm.infos.get(p.name) is p
        out.append({"name": p.name, "package": p.package, "version": p.version, "module": p.module,
                    "builtin": p.builtin, "enabled": p.enabled, "hooks": p.hooks,
                    "registered": registered.get(p.name, []) if loaded else [], "error": p.error,
                    "conflicts": conflicts.get(p.name, []) if loaded else []})
    return sorted(out, key=lambda p: p["name"])  # stable: the plugin that loads before one it shadows


def list_plugins(args) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # what a plugin prints must not break the listing's JSON
        pm = PluginManager()
        plugins = describe(pm)
    if args.json:
        print(json.dumps(plugins, indent=2))
        return 0
    for p in plugins:
        kind = "built-in" if p["builtin"] else f"plugin from {p['package'] or '?'}"
        print(f"{p['name']} {p['version'] or ''} ({kind}, {p['module']})")
        if not p["enabled"]:
            print("  disabled: CORRAL_PLUGINS does not name it")
        if p["error"]:
            print(f"  error: {p['error']}")
        if p["hooks"]:
            print(f"  hooks: {', '.join(p['hooks'])}")
        if p["registered"]:
            print(f"  registers: {', '.join(p['registered'])}")
        for conflict in p["conflicts"]:
            print(f"  conflict: {conflict}")
    if any(p["conflicts"] for p in plugins):
        print(f"rule: {RULE}")
    unknown = sorted(set(pm.allow or []) - {p["name"] for p in plugins})
    if unknown:
        print(f"warning: CORRAL_PLUGINS names {', '.join(unknown)}, which no installed plugin is called")
    return 0


def _require_pip():
    from corral.cli import CLIError
    if importlib.util.find_spec("pip") is None:
        raise CLIError(f"pip is not installed in corral's environment ({sys.executable}); "
                       f"add it with: {sys.executable} -m ensurepip")


def install_plugins(args) -> int:
    _require_pip()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--report", str(report)]
        command += [flag for key, flag in PIP_FLAGS.items() if getattr(args, key)]
        command += ["--index-url", args.index_url] if args.index_url else []
        for package in args.packages:
            command += ["-e", package] if args.editable else [package]
        code = subprocess.call(command)
        if code:
            print(f"corral: pip install failed (exit {code}); corral's plugins are as they were", file=sys.stderr)
            return code
        installed = _requested(report)
    if not installed:
        print("corral: nothing new was installed")
        return 0
    return check_installed(installed)


def _requested(report: Path) -> list[str]:
    """Names of the distributions the user asked for, from pip's installation report."""
    try:
        items = json.loads(report.read_text())["install"]
    except (OSError, ValueError, KeyError):
        return []
    return [i["metadata"]["name"] for i in items if i.get("requested")]


def check_installed(packages: list[str]) -> int:
    """Loads the plugins in a fresh process, as a restarted server would, and reports on `packages`:
    0 when each is a corral plugin that loads, else 1 (the packages stay installed either way)."""
    result = subprocess.run([sys.executable, "-m", "corral.cli", "--log-level", "ERROR", "plugins", "--json"],
                            capture_output=True, text=True)
    if result.returncode:
        print(f"corral: installed, but corral no longer starts:\n{result.stderr}", file=sys.stderr)
        return 1
    plugins = json.loads(result.stdout)
    status = 0
    for package in packages:
        mine = [p for p in plugins if p["package"] and canonical(p["package"]) == canonical(package)]
        if not mine:
            print(f"corral: {package} was installed, but it is not a corral plugin (it declares no entry point "
                  f"in group {ENTRY_POINT_GROUP!r}); corral ignores it. Remove it with: corral plugins uninstall "
                  f"{package}", file=sys.stderr)
            status = 1
        for p in mine:
            if p["error"] and not p["hooks"]:
                print(f"corral: plugin {p['name']} from {package} fails to load and is skipped, the other "
                      f"plugins still serve: {p['error']}", file=sys.stderr)
                status = 1
                continue
            if p["error"]:  # it loads, but a hook failed or a registration was refused
                print(f"corral: plugin {p['name']} from {package}: {p['error']}", file=sys.stderr)
                status = 1
            what = ", ".join(p["registered"]) or "nothing"
            note = "" if p["enabled"] else " (disabled: add it to CORRAL_PLUGINS to load it)"
            print(f"corral: installed plugin {p['name']} {p['version'] or ''} from {package}: registers {what}{note}")
            for conflict in p["conflicts"]:
                print(f"corral: conflict: {conflict} ({RULE})", file=sys.stderr)
    print("corral: restart `corral serve` to serve with the new plugins")
    return status


def corral_requirements() -> set[str]:
    """The installed packages corral needs: its dependencies and its extras', theirs (extras left out),
    and so on; and pip."""
    needed, todo = {"pip"}, ["corral"]
    while todo:
        package = todo.pop()
        try:
            requires = importlib.metadata.requires(package) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if package != "corral" and "extra" in requirement.partition(";")[2]:
                continue
            name = canonical(re.match(r"[A-Za-z0-9._-]+", requirement)[0])
            if name not in needed:
                needed.add(name)
                todo.append(name)
    return needed


def uninstall_plugins(args) -> int:
    from corral.cli import CLIError
    _require_pip()
    if any(canonical(p) == "corral" for p in args.packages):
        raise CLIError("that would uninstall corral itself; to turn built-in plugins off, "
                       "list the ones to keep in CORRAL_PLUGINS")
    needed = sorted(p for p in args.packages if canonical(p) in corral_requirements())
    if needed:
        raise CLIError(f"corral itself needs {', '.join(needed)}: not uninstalled (use pip if you mean it)")
    wanted = {canonical(p) for p in args.packages}
    removed = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                     if ep.dist and canonical(ep.dist.name) in wanted)
    code = subprocess.call([sys.executable, "-m", "pip", "uninstall", "-y", *args.packages])
    if not code and removed:
        print(f"corral: removed plugin(s) {', '.join(removed)}")
    return code

