"""Engine processes started ahead of need. A spawned engine process spends the first 1.5-2 s of every load
importing torch and corral's engine before it reads a byte of the model; a spare has done that and waits
on its pipe for the model it is to serve (an EngineAssignment). A server whose models load on demand keeps
one spare: a load takes it, and another starts behind it. A spare never touches CUDA before its
assignment, but only engines that see every GPU take one (CUDA_VISIBLE_DEVICES is fixed once CUDA starts).
"""
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineAssignment:
    """API process -> a spare engine process: the model to serve, as run_engine takes it."""

    name: str
    model_dir: str
    engine_args: dict
    num_threads: int | None
    log_level: int
    devices: list[int] | None


@dataclass(slots=True)
class Spare:
    process: multiprocessing.Process
    conn: Connection


class EngineSpares:
    """`count` spare engine processes, kept started from a thread of their own."""

    def __init__(self, count: int = 1):
        self.count = count
        self._spares: list[Spare] = []
        self._lock = threading.Lock()
        self._fill_lock = threading.Lock()
        self._closed = False

    def refill(self):
        """Start spares up to `count` in the background (spawning blocks for a few milliseconds each)."""
        threading.Thread(target=self._fill, name="engine-spares", daemon=True).start()

    def take(self) -> Spare | None:
        """A live spare, no longer kept here (None when there is none yet); another starts behind it."""
        taken = None
        with self._lock:
            while self._spares and taken is None:
                spare = self._spares.pop(0)
                if spare.process.is_alive():
                    taken = spare
                else:
                    spare.conn.close()
        self.refill()
        return taken

    def close(self):
        """End the spares at once: they hold no model, and one may still be importing."""
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.conn.close()
            spare.process.kill()
        for spare in spares:
            spare.process.join()

    def _fill(self):
        with self._fill_lock:  # one filler at a time; `take` never waits for a spawn
            while True:
                with self._lock:
                    if self._closed or len(self._spares) >= self.count:
                        return
                try:
                    spare = _spawn()
                except OSError as e:  # loads spawn their own processes, as without spares
                    logger.warning("no spare engine process: %s", e)
                    return
                with self._lock:
                    if not self._closed:
                        self._spares.append(spare)
                        continue
                spare.conn.close()  # closed while it started: it exits at once
                return


def _spawn() -> Spare:
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(target=wait_for_model, args=(child_conn,), name="corral-engine-spare", daemon=True)
    process.start()
    child_conn.close()
    return Spare(process, conn)


def wait_for_model(conn: Connection):
    """A spare's entry point: the imports a load would wait for, then its assignment; the pipe closing first
    (no model came, the server stopped) ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API process decides when engines stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import corral.engine.core  # noqa: F401
    from corral.server.engine_process import run_engine
    try:
        assignment: EngineAssignment = conn.recv()
    except (EOFError, OSError):
        return
    run_engine(assignment.name, assignment.model_dir, assignment.engine_args, conn, assignment.num_threads,
               assignment.log_level, assignment.devices)
