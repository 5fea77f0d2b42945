import json
import subprocess
import sys

from corral.registry.plugins import PluginManager


def add_commands(subparsers):
    parser = subparsers.add_parser("plugins", help="list installed plugins, install or uninstall them")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=list_plugins)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    install = actions.add_parser("install", help="pip install plugin packages into this environment")
    install.add_argument("packages", nargs="+")
    install.add_argument("-U", "--upgrade", action="store_true")
    install.add_argument("-e", "--editable", action="store_true", help="install a local path in editable mode")
    install.set_defaults(handler=install_plugins)
    uninstall = actions.add_parser("uninstall", help="pip uninstall plugin packages")
    uninstall.add_argument("packages", nargs="+")
    uninstall.set_defaults(handler=uninstall_plugins)


def describe(pm: PluginManager) -> list[dict]:
    """Each plugin with its hooks, what it registered, and its load error."""
    registered: dict[str, list[str]] = {}
    for hook in ("register_architectures", "register_sources"):
        for r in pm.collect(hook):
            registered.setdefault(r.plugin, []).append(r.key)
    conflicts = [c for hook in ("register_architectures", "register_sources") for c in pm.registrations(hook)[1]]
    return [{"name": p.name, "module": p.module, "version": p.version, "builtin": p.builtin, "hooks": p.hooks,
             "registered": registered.get(p.name, []), "error": p.error,
             "conflicts": [c for c in conflicts if p.name in c]} for p in pm.plugins()]


def list_plugins(args) -> int:
    plugins = describe(PluginManager())
    if args.json:
        print(json.dumps(plugins, indent=2))
        return 0
    for p in plugins:
        kind = "built-in" if p["builtin"] else "plugin"
        print(f"{p['name']} {p['version'] or ''} ({kind}, {p['module']})")
        if p["error"]:
            print(f"  error: {p['error']}")
        if p["hooks"]:
            print(f"  hooks: {', '.join(p['hooks'])}")
        if p["registered"]:
            print(f"  registers: {', '.join(p['registered'])}")
        for conflict in p["conflicts"]:
            print(f"  conflict: {conflict}")
    return 0


def install_plugins(args) -> int:
    command = [sys.executable, "-m", "pip", "install"] + (["--upgrade"] if args.upgrade else [])
    for package in args.packages:
        command += ["-e", package] if args.editable else [package]
    return subprocess.call(command)


def uninstall_plugins(args) -> int:
    return subprocess.call([sys.executable, "-m", "pip", "uninstall", "-y", *args.packages])
