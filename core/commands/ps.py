"""corral ps: the models a running server has loaded, as `ollama ps` lists them."""
from datetime import datetime, timezone


def add_commands(subparsers):
    from corral.server.ollama.client import add_server_flags
    p = subparsers.add_parser("ps", help="list the models a running server has loaded")
    add_server_flags(p)
    p.set_defaults(handler=ps)


def ps(args) -> int:
    from corral.progress import human_size
    from corral.server.ollama.client import OllamaAPI
    models = OllamaAPI.from_args(args).get("/api/ps")["models"]
    rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    rows += [(m["name"], m["digest"][:12], human_size(m["size"]) if m["size"] else "",
              "100% GPU" if m.get("size_vram") else "100% CPU", str(m.get("context_length") or ""),
              until(m["expires_at"])) for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def until(expires_at: str) -> str:
    moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    if moment.year == 9999:
        return "Forever"
    seconds = (moment - datetime.now(timezone.utc)).total_seconds()
    if seconds <= 1:
        return "Stopping..."
    for size, unit in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} from now"
    return ""
