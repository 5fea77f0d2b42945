"""corral stop MODEL: unload a model from a running server (it loads again on its next request)."""


def add_commands(subparsers):
    from corral.server.ollama.client import add_server_flags
    p = subparsers.add_parser("stop", help="unload a model from a running server")
    p.add_argument("model")
    add_server_flags(p)
    p.set_defaults(handler=stop)


def stop(args) -> int:
    from corral.server.ollama.client import OllamaAPI
    OllamaAPI.from_args(args).post("/api/generate", {"model": args.model, "keep_alive": 0})
    return 0
