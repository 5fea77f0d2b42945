"""Rank 0's side of a tensor-parallel engine: the processes of ranks 1..N-1, their rendezvous and
the watchdog that turns a rank's death into the engine's failure within a bounded time."""
import contextlib
import logging
import multiprocessing
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import wait

import torch
import torch.distributed as dist

from corral.config import ConfigError, EngineConfig
from corral.distributed.group import RENDEZVOUS_TIMEOUT, TensorParallelGroup, connect, rank_device
from corral.distributed.step_broadcast import StepBroadcast
from corral.engine.worker import run_worker

logger = logging.getLogger(__name__)

FAILURE_GRACE = 5.0  # seconds a collective's error waits for the watchdog to say which rank failed and why


class RankFailed(RuntimeError):
    """A rank of a running engine died or failed: the engine cannot go on."""


class WorkerProcesses:
    """Ranks 1..N-1, spawned with a rendezvous store of their own on a port the OS picks (two engines
    never share one), joined with rank 0 into `group`. When one dies, `failure` says which rank and
    why, the others are ended (so that rank 0's collectives fail rather than wait) and the callback
    given to `watch` runs."""

    def __init__(self, config: EngineConfig, model_cls, log_level: int | None = None):
        size = config.tensor_parallel_size
        self.failure: str | None = None
        self._failed = threading.Event()
        self._closing = False
        self._serving = False  # every rank built and waiting for steps
        self._lock = threading.Lock()
        self._on_failure: Callable[[str], None] | None = None
        self.store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=RENDEZVOUS_TIMEOUT, wait_for_workers=False)
        context = multiprocessing.get_context("spawn")
        num_threads = max(1, torch.get_num_threads() // size)  # CPU ranks share the cores
        log_level = log_level if log_level is not None else logging.getLogger().getEffectiveLevel()
        self.processes, self.conns = [], []
        for rank in range(1, size):
            conn, child_conn = context.Pipe()
            process = context.Process(target=run_worker, name=f"corral-rank-{rank}", daemon=True,
                                      args=(rank, config, model_cls, self.store.port, child_conn, num_threads,
                                            log_level))
            with _children_allowed():
                process.start()
            child_conn.close()
            self.processes.append(process)
            self.conns.append(conn)
        weakref.finalize(self, _kill, list(self.processes))
        threading.Thread(target=_watch, args=(weakref.ref(self), self.processes, self.conns), daemon=True,
                         name="tensor-parallel-watchdog").start()
        self.group = self._connect(rank_device(config.device, 0), size)
        self.steps = StepBroadcast(self.group, rank_device(config.device, 0),
                                   on_error=lambda e: self.explain(e, RankFailed))

    def _connect(self, device: torch.device, size: int) -> TensorParallelGroup:
        """Rank 0 joins; a rank that dies first ends the wait (its process never joins)."""
        joined: dict = {}

        def join():
            try:
                joined["group"] = connect(0, size, self.store, device)
            except Exception as e:
                joined["error"] = e
        thread = threading.Thread(target=join, daemon=True, name="tensor-parallel-rendezvous")
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if self._failed.is_set():
                self.close()
                raise ConfigError(self.failure)
        if "error" in joined:
            self.close()
            raise self.explain(joined["error"])
        return joined["group"]

    def serve(self, on_failure: Callable[[str], None] | None = None):
        """Every rank is built: from now on they run steps, and `on_failure(message)` is called when a
        rank dies (now, if one already has)."""
        with self._lock:
            self._serving, self._on_failure = True, on_failure
            failure = self.failure
        if failure is not None and on_failure is not None:
            on_failure(failure)

    def explain(self, error: BaseException, as_type: type[Exception] = ConfigError) -> BaseException:
        """A collective's error as the failure of the rank behind it, when a rank failed."""
        if isinstance(error, ConfigError) or not self._failed.wait(FAILURE_GRACE):
            return error
        return as_type(self.failure)

    def _fail(self, message: str):
        if self._closing:
            return
        logger.error("%s; ending the engine", message)
        _kill(self.processes)
        with self._lock:
            self.failure = message
            on_failure = self._on_failure
        self._failed.set()
        if on_failure is not None:
            on_failure(message)

    def close(self, timeout: float = 5.0):
        """Stop the ranks: ask them (when they are healthy and waiting for a step), then end them."""
        if self._closing:
            return
        self._closing = True
        if self._serving and self.failure is None:
            try:
                self.steps.stop()
            except RuntimeError:
                pass
            for process in self.processes:
                process.join(timeout)
        _kill(self.processes)
        for conn in self.conns:
            conn.close()


@contextlib.contextmanager
def _children_allowed():
    """A server's engine process is daemonic, and multiprocessing refuses children to those (they would
    outlive it). Ranks do not: each ends when its pipe from rank 0 closes (run_worker)."""
    config = multiprocessing.current_process()._config
    daemon = config.pop("daemon", None)
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon


def _kill(processes):
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()


def _watch(owner: weakref.ref, processes: list, conns: list):
    """The watchdog's thread: waits for a rank's process to end or to say why it fails. Holds its
    owner weakly, so that an engine dropped without close() is still collected (and its ranks killed)."""
    by_sentinel = {p.sentinel: rank for rank, p in enumerate(processes, start=1)}
    ready = wait([*by_sentinel, *conns])
    message = None
    for rank, conn in enumerate(conns, start=1):
        try:
            if conn in ready or conn.poll():
                message = f"tensor-parallel rank {rank} failed: {conn.recv()}"
                break
        except (EOFError, OSError):
            continue
    if message is None:
        rank = next((by_sentinel[s] for s in ready if s in by_sentinel), 1)
        processes[rank - 1].join(1)
        message = f"tensor-parallel rank {rank} died (exit code {processes[rank - 1].exitcode})"
    if (workers := owner()) is not None:
        workers._fail(message)
