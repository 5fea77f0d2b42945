"""The engine process of one served model: EngineCore with its own PluginManager, driven over a Pipe.

Messages in:  ("add", [Request, ...]), ("abort", [request_id, ...]), ("shutdown",)
Messages out: ("ready", info), ("outputs", [EngineCoreOutput, ...], stats), ("stats", stats),
              ("reject", request_id, message), ("fatal", message)
While idle the process blocks on the pipe; the pipe closing (the API process died) ends it.
"""
import json
import logging
import multiprocessing
import os
import queue
import signal
import struct
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

ACTIVATION_RESERVE = 0.1  # of a model's GPU share, kept for activations besides weights and KV cache


class EngineProcess:
    """The API process's end: spawns `run_engine`, reads its messages on one thread and writes on
    another (a busy engine never blocks the event loop). `on_message(self, message)` runs on `loop`;
    the pipe closing arrives as ("eof",)."""

    def __init__(self, name: str, model_dir: str, engine_args: dict, num_threads: int | None, log_level: int,
                 loop, on_message: Callable):
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(target=run_engine, name=f"corral-engine-{name}", daemon=True,
                                       args=(name, model_dir, engine_args, child_conn, num_threads, log_level))
        self._child_conn = child_conn
        self._loop, self._on_message = loop, on_message
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.name = name

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self):
        """Blocking: spawn the process and the pipe threads."""
        self.process.start()
        self._child_conn.close()
        threading.Thread(target=self._read, daemon=True, name=f"engine-reader-{self.name}").start()
        threading.Thread(target=self._write, daemon=True, name=f"engine-writer-{self.name}").start()

    def send(self, message: tuple):
        self._outbox.put(message)

    def _read(self):
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = ("eof",)
            except Exception as e:  # an unreadable message: the engine is unusable
                message = ("fatal", f"bad message from the engine: {e}")
            try:
                self._loop.call_soon_threadsafe(self._on_message, self, message)
            except RuntimeError:
                return  # the event loop is closed
            if message[0] == "eof":
                return

    def _write(self):
        while (message := self._outbox.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                return

    def stop(self, timeout: float):
        """Blocking: ask the engine to exit, then terminate and kill it if it does not."""
        self._outbox.put(("shutdown",))
        self._outbox.put(None)
        if self.process.pid is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def run_engine(name: str, model_dir: str, engine_args: dict, conn, num_threads: int | None = None,
               log_level: int = logging.INFO):
    """Entry point of the spawned process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the API process decides
    logging.basicConfig(level=log_level, format=f"%(levelname)s engine[{name}] %(name)s: %(message)s")
    try:
        core = _build_core(model_dir, engine_args, num_threads)
    except Exception as e:
        logger.exception("engine for %s failed to start", name)
        _send(conn, ("fatal", f"{type(e).__name__}: {e}"))
        conn.close()
        raise SystemExit(1)
    _send(conn, ("ready", {"pid": os.getpid(), "max_model_len": core.config.max_model_len,
                           "num_kv_blocks": core.num_blocks, "block_size": core.config.block_size,
                           "vocab_size": core.model_config.vocab_size}))
    try:
        serve(core, conn)
    except (EOFError, OSError, BrokenPipeError):
        logger.info("the API process went away; engine for %s exits", name)
    except Exception as e:
        logger.exception("engine for %s failed", name)
        _send(conn, ("fatal", f"{type(e).__name__}: {e}"))
        raise SystemExit(1)


def _build_core(model_dir: str, engine_args: dict, num_threads: int | None):
    import torch

    from corral.config import EngineConfig
    from corral.engine.core import EngineCore
    from corral.registry.plugins import PluginManager

    if num_threads:
        torch.set_num_threads(num_threads)
    config = EngineConfig(model=model_dir, **engine_args)
    if config.device.startswith("cuda") and config.kv_cache_memory_bytes is None and config.num_kv_blocks is None:
        config.kv_cache_memory_bytes = cuda_kv_budget(config)
    return EngineCore(config, PluginManager())


def serve(core, conn):
    """Step while there is work; block on the pipe while there is none."""
    while True:
        changed = False
        if not core.has_unfinished_requests():
            if not _handle(core, conn, conn.recv()):
                return
            changed = True
        while conn.poll():
            if not _handle(core, conn, conn.recv()):
                return
            changed = True
        if core.has_unfinished_requests():
            outputs = core.step()
            if outputs or changed:
                conn.send(("outputs", outputs, core.stats()))
        elif changed:
            conn.send(("stats", core.stats()))


def _handle(core, conn, message) -> bool:
    kind = message[0]
    if kind == "add":
        for request in message[1]:
            try:
                core.add_request(request)
            except ValueError as e:
                conn.send(("reject", request.request_id, str(e)))
    elif kind == "abort":
        core.abort_requests(message[1])
    elif kind == "shutdown":
        return False
    return True


def _send(conn, message):
    try:
        conn.send(message)
    except (OSError, BrokenPipeError):
        pass


def cuda_kv_budget(config) -> int:
    """KV cache bytes for this model's share of the GPU: share * total, less its weights and an
    activation reserve. Measured from the checkpoint, so engines sharing a GPU do not race."""
    import torch

    total = torch.cuda.mem_get_info(torch.device(config.device))[1]
    share = int(total * config.gpu_memory_utilization)
    itemsize = torch.empty(0, dtype=config.torch_dtype).element_size()
    weights = checkpoint_numel(Path(config.model)) * itemsize
    budget = share - weights - int(share * ACTIVATION_RESERVE)
    logger.info("GPU share %.1f GiB: weights %.1f GiB, KV cache %.1f GiB", share / 2**30, weights / 2**30,
                max(budget, 0) / 2**30)
    return max(budget, 0)


def checkpoint_numel(model_dir: Path) -> int:
    """Parameters in the checkpoint's safetensors files, read from their headers."""
    numel = 0
    for path in model_dir.glob("*.safetensors"):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for key, entry in header.items():
            if key != "__metadata__":
                n = 1
                for d in entry["shape"]:
                    n *= d
                numel += n
    return numel
