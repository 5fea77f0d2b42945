"""An engine process's record of its loop (the `step_log` setting), for finding where a server's time goes:
one JSON line per step, with how long the engine waited for work before it (idle), how long the step took, the
tokens it returned and the load after it. Lines go out whole, so engines may share a file. A file that cannot be
written (a full disk) is given up with a warning: the engine goes on serving."""
import json
import logging
import time

from corral.engine.messages import SchedulerStats

logger = logging.getLogger(__name__)


class StepLog:
    def __init__(self, path: str, model: str):
        self._path, self._model = path, model
        self._start = time.time()
        self._file = None
        try:
            self._file = open(path, "a", buffering=1)  # a line per write: whole lines from each process
        except OSError as e:
            self._give_up(e)

    def record(self, idle_s: float, step_s: float, num_tokens: int, stats: SchedulerStats):
        if self._file is None:
            return
        try:
            self._file.write(json.dumps({"model": self._model, "t": round(time.time() - self._start, 6),
                                         "idle_s": round(idle_s, 6), "step_s": round(step_s, 6),
                                         "tokens": num_tokens, "running": stats.num_running,
                                         "waiting": stats.num_waiting}) + "\n")
        except OSError as e:
            self._give_up(e)

    def _give_up(self, error: OSError):
        logger.warning("step_log %s cannot be written (%s); this engine goes on without it", self._path,
                       error.strerror or error)
        self.close()

    def close(self):
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:  # the line that failed, flushed again
                pass
