"""The engine process of one served model: EngineCore with its own PluginManager, driven over a Pipe
with the typed messages of corral.engine.messages (ToEngine in, FromEngine out). While idle the
process blocks on the pipe; the pipe closing (the API process died) ends it.

The API process reads and writes the pipe on its event loop (a PipeWriter holds what the pipe cannot take
yet): a thread handing each message over would wait for the interpreter's lock behind the busy event loop,
message by message, and delay a burst of new requests. Where the loop cannot watch the pipe (Windows), a
reader and a writer thread do it, the writer a burst of messages at a time.
"""
import asyncio
import gc
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable

from corral.engine.messages import (AbortRequests, AddRequests, EngineExited, EngineFailed, EngineOutputs,
                                    EngineReady, FromEngine, RequestRejected, SetKVGrant, Shutdown, Sleep, ToEngine,
                                    Wake, coalesced)
from corral.engine.request import Request
from corral.server.engine_spares import EngineAssignment, Spare
from corral.server.pipe_writer import PipeWriter
from corral.server.step_log import StepLog

logger = logging.getLogger(__name__)

MESSAGES_PER_READ = 16  # read from an engine's pipe in one turn of the event loop, at most


class EngineProcess:
    """The API process's end: spawns `run_engine`, reads its messages on `loop` as they arrive and writes
    there too, without waiting on a busy engine. `on_message(self, message)` runs on `loop`; the pipe
    closing arrives as EngineExited."""

    def __init__(self, name: str, model_dir: str, engine_args: dict, num_threads: int | None, log_level: int,
                 loop, on_message: Callable, devices: list[int] | None = None, spare: Spare | None = None):
        """`devices`: the GPUs this engine may see (its CUDA_VISIBLE_DEVICES); None: all of them. `spare`: a
        process started ahead (corral.server.engine_spares) that serves this model instead of a new one."""
        self._assignment = EngineAssignment(name, model_dir, engine_args, num_threads, log_level, devices)
        self._spare = spare
        if spare is not None:
            self._conn, self._child_conn, self.process = spare.conn, None, spare.process
        else:
            self._new_process()
        self._loop, self._on_message = loop, on_message
        self._writer: PipeWriter | None = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # the writer thread's, where there is no PipeWriter
        self.name = name

    def _new_process(self):
        a = self._assignment
        context = multiprocessing.get_context("spawn")
        self._conn, self._child_conn = context.Pipe()
        self.process = context.Process(target=run_engine, name=f"corral-engine-{a.name}", daemon=True,
                                       args=(a.name, a.model_dir, a.engine_args, self._child_conn, a.num_threads,
                                             a.log_level, a.devices))

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self):
        """Blocking: spawn the process (or hand the spare its model) and the pipe threads."""
        if self._spare is not None:
            try:
                self._conn.send(self._assignment)
            except OSError:  # the spare died since it was taken: a process of its own, as without spares
                self._conn.close()
                self._spare = None
                self._new_process()
        if self._spare is None:
            self.process.start()
            self._child_conn.close()
        try:
            self._writer = PipeWriter(self._loop, self._conn)
        except OSError:  # not a socket pair (Windows)
            threading.Thread(target=self._write, daemon=True, name=f"engine-writer-{self.name}").start()
        try:
            self._loop.call_soon_threadsafe(self._watch)
        except RuntimeError:  # the event loop is closed
            pass

    def send(self, message: ToEngine):
        """From the loop, or from another thread (it is handed to the loop)."""
        if self._writer is None:
            self._outbox.put(message)
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._writer.send(message)
        else:
            try:
                self._loop.call_soon_threadsafe(self._writer.send, message)
            except RuntimeError:  # the event loop is closed
                pass

    def _watch(self):
        """On the loop: read the pipe whenever it has data."""
        self._fd = self._conn.fileno()
        try:
            self._loop.add_reader(self._fd, self._read_ready)
        except NotImplementedError:  # a loop that cannot watch a pipe (Windows' proactor): a reader thread
            threading.Thread(target=self._read, daemon=True, name=f"engine-reader-{self.name}").start()

    def _read_ready(self):
        for _ in range(MESSAGES_PER_READ):  # then the loop's other work, before the pipe is read again
            message = self._receive(block=False)
            if message is None:
                return
            exited = isinstance(message, EngineExited)
            if exited:
                self._loop.remove_reader(self._fd)
                if self._writer is not None:
                    self._writer.close()
            self._on_message(self, message)
            if exited:
                return

    def _read(self):
        while True:
            message = self._receive(block=True)
            try:
                self._loop.call_soon_threadsafe(self._on_message, self, message)
            except RuntimeError:
                return  # the event loop is closed
            if isinstance(message, EngineExited):
                return

    def _receive(self, block: bool) -> FromEngine | None:
        """The next message; None when none is waiting and `block` is False."""
        try:
            if not block and not self._conn.poll():
                return None
            return self._conn.recv()
        except (EOFError, OSError):
            return EngineExited()
        except Exception as e:  # an unreadable message: the engine is unusable
            return EngineFailed(f"bad message from the engine: {e}")

    def _write(self):
        while True:
            burst = [self._outbox.get()]
            while not self._outbox.empty():
                burst.append(self._outbox.get())
            for message in coalesced(burst):
                if message is None:
                    return
                try:
                    self._conn.send(message)
                except (OSError, ValueError):
                    return

    def stop(self, timeout: float):
        """Blocking: ask the engine to exit, then terminate and kill it if it does not."""
        self.send(Shutdown())
        self._outbox.put(None)
        if self.process.pid is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():  # it ignores SIGTERM
            self.process.kill()
            self.process.join()


def run_engine(name: str, model_dir: str, engine_args: dict, conn, num_threads: int | None = None,
               log_level: int = logging.INFO, devices: list[int] | None = None):
    """Entry point of the spawned process."""
    if devices is not None:  # before CUDA starts; the engine's other ranks inherit it
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    # Ctrl-C and a SIGTERM to the process group reach engines too; the API process decides when they stop
    # (after in-flight requests finish), and its death closes the pipe, which ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=f"%(levelname)s engine[{name}] %(name)s: %(message)s")
    try:
        core = _build_core(model_dir, engine_args, num_threads, on_worker_failure=_end_engine)
    except Exception as e:
        logger.exception("engine for %s failed to start", name)
        _send(conn, EngineFailed(f"{type(e).__name__}: {e}"))
        conn.close()
        raise SystemExit(1)
    from corral.engine.sleep import memory_held
    # the engine process holds the engine for its whole life: out of the collector's generations,
    # the collections that each step's small objects set off no longer walk its objects
    gc.collect()
    gc.freeze()
    _send(conn, EngineReady(os.getpid(), core.config.max_model_len, core.num_blocks, core.config.block_size,
                            core.model_config.vocab_size, memory_held(core), core.startup))
    try:
        serve(core, conn, StepLog(core.config.step_log, name) if core.config.step_log else None)
    except (EOFError, OSError, BrokenPipeError):
        logger.info("the API process went away; engine for %s exits", name)
    except Exception as e:
        logger.exception("engine for %s failed", name)
        _send(conn, EngineFailed(f"{type(e).__name__}: {e}"))
        raise SystemExit(1)
    finally:
        core.shutdown()


def visible_devices(devices: list[int], inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for an engine given `devices`, numbered as this process sees them."""
    if inherited:
        names = [d.strip() for d in inherited.split(",")]
        return ",".join(names[i] for i in devices if i < len(names))
    return ",".join(map(str, devices))


def _end_engine(message: str):
    """A rank of this engine died: end the whole engine now (its collectives may never return); the
    API process sees the exit, fails the model's requests with 503 and restarts it."""
    logger.error("%s; the engine exits", message)
    os._exit(1)


def _build_core(model_dir: str, engine_args: dict, num_threads: int | None, on_worker_failure=None):
    import torch

    from corral.config import EngineConfig
    from corral.engine.core import EngineCore
    from corral.registry.plugins import PluginManager

    config = EngineConfig(model=model_dir, **engine_args)
    if num_threads and config.device == "cpu":  # CPU engines share the cores
        torch.set_num_threads(num_threads)
    return EngineCore(config, PluginManager(), on_worker_failure)


class Outbox:
    """The engine's messages to the API process, pickled and sent by a thread of their own: the engine
    loop never waits on the pipe or on a busy API process."""

    def __init__(self, conn):
        self._conn = conn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._failed: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="engine-outbox", daemon=True)
        self._thread.start()

    def send(self, message: FromEngine):
        if self._failed is not None:
            raise self._failed
        self._queue.put(message)

    def close(self):
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self):
        while (message := self._queue.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError) as e:
                self._failed = e if isinstance(e, OSError) else OSError(str(e))
                return


def serve(core, conn, step_log: StepLog | None = None):
    """Step while there is work; block on the pipe while there is none. Messages out go through an
    Outbox."""
    outbox = Outbox(conn)
    try:
        _serve(core, conn, outbox, step_log)
    finally:
        outbox.close()
        if step_log is not None:
            step_log.close()


def _serve(core, conn, outbox: "Outbox", step_log: StepLog | None):
    idle = 0.0  # the waits for work since the last step (also those that ended in Sleep, Wake, SetKVGrant ...)
    while True:
        changed = False
        if not core.has_unfinished_requests():
            start = time.perf_counter()
            message = conn.recv()
            idle += time.perf_counter() - start
            if not _handle(core, outbox, message, step_log):
                return
            changed = True
        while conn.poll():
            if not _handle(core, outbox, conn.recv(), step_log):
                return
            changed = True
        if core.has_unfinished_requests():
            start = time.perf_counter()
            outputs = core.step()
            stepped = time.perf_counter() - start
            if outputs or changed or step_log is not None:
                stats = core.stats()
                if outputs or changed:
                    outbox.send(EngineOutputs(outputs, stats))
                if step_log is not None:
                    step_log.record(idle, stepped, outputs, stats)
            idle = 0.0
        elif changed:
            outbox.send(EngineOutputs([], core.stats()))


def _handle(core, outbox: Outbox, message: ToEngine, step_log: StepLog | None = None) -> bool:
    if isinstance(message, AddRequests):
        if step_log is not None:
            step_log.received(message.requests)
        for request in message.requests:
            try:
                core.add_request(Request.from_engine_core_request(request))
            except ValueError as e:
                outbox.send(RequestRejected(request.request_id, str(e)))
    elif isinstance(message, AbortRequests):
        core.abort_requests(message.request_ids)
    elif isinstance(message, (Sleep, Wake)):
        from corral.engine.sleep import answer
        outbox.send(answer(core, message))
    elif isinstance(message, SetKVGrant):
        core.kv_cache_manager.set_grant(message.num_blocks)
        core.scheduler.admission_blocked = False  # a larger pool may admit a waiting request
    elif isinstance(message, Shutdown):
        return False
    return True


def _send(conn, message):
    try:
        conn.send(message)
    except (OSError, BrokenPipeError):
        pass
