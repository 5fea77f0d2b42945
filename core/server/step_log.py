"""An engine process's record of its loop (the `step_log` setting), for finding where a server's time goes:
one JSON line per step, with how long the engine waited for work before it (idle), how long the step took, the
tokens it returned and the load after it. Lines go out whole, so engines may share a file."""
import json
import time

from corral.engine.messages import SchedulerStats


class StepLog:
    def __init__(self, path: str, model: str):
        self._file = open(path, "a", buffering=1)  # a line per write: whole lines from each process
        self._model = model
        self._start = time.time()

    def record(self, idle_s: float, step_s: float, num_tokens: int, stats: SchedulerStats):
        self._file.write(json.dumps({"model": self._model, "t": round(time.time() - self._start, 6),
                                     "idle_s": round(idle_s, 6), "step_s": round(step_s, 6), "tokens": num_tokens,
                                     "running": stats.num_running, "waiting": stats.num_waiting}) + "\n")

    def close(self):
        self._file.close()
