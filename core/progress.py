"""Where a model's download stands: read by the server for /v1/models, drawn by the CLI, logged."""
import logging
import threading
import time
from typing import Callable

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class DownloadCancelled(BaseException):
    """Raised inside download threads once the download was cancelled (a BaseException, like
    KeyboardInterrupt, so that client libraries which retry on Exception let it through)."""


class DownloadProgress:
    """Thread-safe counters for one model: `state` is resolving, downloading, converting, ready or
    error; `fraction` is None until the total size is known. `callback(progress)` runs on every
    change (from download threads); `bars` draws tqdm bars, one overall and one per file."""

    def __init__(self, name: str = "", callback: Callable[["DownloadProgress"], None] | None = None,
                 bars: bool = False, log_interval: float = 5.0):
        self.name = name
        self.callback = callback
        self.bars = bars
        self.log_interval = log_interval
        self.state = "resolving"
        self.source: str | None = None
        self.total_bytes = 0
        self.done_bytes = 0
        self.files_total = 0
        self.files_done = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._bar: tqdm | None = None
        self._last_log = 0.0

    @property
    def fraction(self) -> float | None:
        if self.state == "ready":
            return 1.0
        return self.done_bytes / self.total_bytes if self.total_bytes else None

    def to_dict(self) -> dict:
        return {"state": self.state, "source": self.source, "fraction": self.fraction,
                "done_bytes": self.done_bytes, "total_bytes": self.total_bytes,
                "files_done": self.files_done, "files_total": self.files_total, "error": self.error}

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def set_state(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        if state in ("ready", "error") and self._bar is not None:
            self._bar.close()
            self._bar = None
        self._changed(force_log=state != "downloading")

    def begin(self, source: str, files_total: int, total_bytes: int, done_bytes: int = 0,
              files_done: int = 0) -> None:
        with self._lock:
            self.source, self.files_total, self.total_bytes = source, files_total, total_bytes
            self.files_done, self.done_bytes, self.state = files_done, done_bytes, "downloading"
            if self._bar is not None:  # an earlier source gave up
                self._bar.close()
                self._bar = None
            if self.bars:
                self._bar = tqdm(total=total_bytes, initial=done_bytes, unit="B", unit_scale=True,
                                 unit_divisor=1024, desc=f"{self.name} ({files_total} files)", position=0)
        self._changed(force_log=True)

    def advance(self, n: int) -> None:
        """Count `n` more bytes (negative when a corrupt file is thrown away)."""
        if self.cancelled:
            raise DownloadCancelled(f"download of {self.name} cancelled")
        with self._lock:
            self.done_bytes += n
            if self._bar is not None:
                self._bar.update(n)
        self._changed()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
        self._changed()

    def file_bar(self, desc: str, total: int | None, initial: int = 0) -> tqdm | None:
        if not self.bars:
            return None
        return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=desc[-40:], leave=False)

    def _changed(self, force_log: bool = False) -> None:
        now = time.monotonic()
        if force_log or (not self.bars and now - self._last_log >= self.log_interval):  # bars say it already
            self._last_log = now
            if self.state == "downloading" and self.total_bytes:
                logger.info("%s: downloading from %s, %.0f%% of %s (%d/%d files)", self.name, self.source,
                            100 * (self.fraction or 0), human_size(self.total_bytes), self.files_done,
                            self.files_total)
            elif self.state == "error":  # the caller reports the error itself
                logger.debug("%s: error (%s)", self.name, self.error)
            elif self.state != "downloading":
                logger.info("%s: %s", self.name, self.state)
        if self.callback is not None:
            self.callback(self)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
