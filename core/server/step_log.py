"""An engine process's record of its loop (the `step_log` setting), for finding where a server's time goes:
one JSON line per step, with how long the engine waited for work before it (idle), how long the step took, the
tokens it returned, the requests it finished, the load after it (running and waiting requests, the fraction of
the KV cache in use, its blocks (an elastic grant changes them), the preemptions since the engine started),
and the requests received since the line before (`added`) with the longest time one of them took from the API
process receiving it (its arrival_time) to the engine taking it (`transit_s`).
`at` is the wall clock (Unix seconds), to set beside a client's record of the same run. Lines go out whole, so
engines may share a file. A file that cannot be written (a full disk) is given up with a warning: the engine
goes on serving."""
import json
import logging
import time

from corral.engine.messages import EngineCoreRequest, SchedulerStats
from corral.outputs import EngineCoreOutput

logger = logging.getLogger(__name__)


class StepLog:
    def __init__(self, path: str, model: str):
        self._path, self._model = path, model
        self._start = time.time()
        self._file = None
        self._added, self._transit_s = 0, 0.0
        try:
            self._file = open(path, "a", buffering=1)  # a line per write: whole lines from each process
        except OSError as e:
            self._give_up(e)

    def received(self, requests: list[EngineCoreRequest]):
        """New requests taken from the pipe; their arrival_time is when the API process received them, on its
        time.monotonic() (one clock for every process of the machine)."""
        now = time.monotonic()
        self._added += len(requests)
        self._transit_s = max([self._transit_s] + [now - r.arrival_time for r in requests])

    def record(self, idle_s: float, step_s: float, outputs: list[EngineCoreOutput], stats: SchedulerStats):
        if self._file is None:
            return
        at = time.time()
        try:
            self._file.write(json.dumps({"model": self._model, "t": round(at - self._start, 6), "at": round(at, 6),
                                         "idle_s": round(idle_s, 6), "step_s": round(step_s, 6),
                                         "tokens": sum(len(o.new_token_ids) for o in outputs),
                                         "finished": sum(o.finish_reason is not None for o in outputs),
                                         "running": stats.num_running,
                                         "waiting": stats.num_waiting,
                                         "kv_usage": round(stats.kv_cache_usage, 4),
                                         "kv_blocks": stats.num_kv_blocks,
                                         "preemptions": stats.num_preemptions, "added": self._added,
                                         "transit_s": round(self._transit_s, 6)}) + "\n")
        except OSError as e:
            self._give_up(e)
        self._added, self._transit_s = 0, 0.0

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
