"""POST /api/pull and DELETE /api/delete over corral's model store: a pull fetches through corral's own sources
(the Hugging Face Hub or the mirror HF_ENDPOINT names, ModelScope, ...) into the store, with Ollama's NDJSON
progress lines; a delete removes the store's copies of a model this server does not serve."""
import asyncio
import logging
import threading
import time

from starlette.responses import JSONResponse, Response

from corral.progress import DownloadProgress
from corral.registry.errors import SourceError
from corral.server.errors import APIError, BadRequestError, ModelNotFoundError, without_paths
from corral.server.ollama.names import find_served, reference
from corral.server.ollama.serving import NDJSONResponse, line
from corral.server.serving import stream_error

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1  # seconds between two progress lines of one download


class PullFailed(APIError):
    """A source's error, with the status its class says (404 unknown, 403 gated, 503 unreachable, ...)."""

    def __init__(self, error: SourceError):
        super().__init__(without_paths(str(error) or type(error).__name__, {}))
        self.status_code = getattr(error, "http_status", 500)


class PullProgress:
    """DownloadProgress changes (from download threads) as progress lines on the event loop's queue, at most
    one per PROGRESS_INTERVAL while bytes arrive."""

    def __init__(self, name: str, ref: str, loop: asyncio.AbstractEventLoop):
        self.name, self.ref, self.loop = name, ref, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.last = 0.0
        self.lock = threading.Lock()
        self.progress = DownloadProgress(name=name, callback=self._changed)

    def _changed(self, progress: DownloadProgress):
        if progress.state != "downloading" or not progress.total_bytes:
            return
        with self.lock:
            now = time.monotonic()
            if now - self.last < PROGRESS_INTERVAL and progress.done_bytes < progress.total_bytes:
                return
            self.last = now
        update = {"status": f"downloading {self.name} from {progress.source}", "digest": self.ref,
                  "total": progress.total_bytes, "completed": min(progress.done_bytes, progress.total_bytes)}
        self.loop.call_soon_threadsafe(self.queue.put_nowait, update)

    def finished(self, _):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def _resolve(ref: str, progress: DownloadProgress):
    from corral.registry.sources import resolve_model
    try:
        return resolve_model(ref, progress=progress, update=True)
    except SourceError as e:
        raise PullFailed(e) from None


def _check(ref: str):
    """An unknown name fails before any line is sent."""
    from corral.registry.sources import parse_ref
    try:
        parse_ref(ref)
    except SourceError as e:
        raise PullFailed(e) from None


DONE = [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


async def pull(name: str, stream: bool, registry) -> Response:
    try:
        find_served(registry, name)
        served = True  # its files are here: nothing to fetch
    except ModelNotFoundError:
        served = False
    ref = reference(name)
    if not served:
        await asyncio.to_thread(_check, ref)
    if not stream:
        if not served:
            await asyncio.to_thread(_resolve, ref, DownloadProgress(name=name))
        return JSONResponse({"status": "success"})
    return NDJSONResponse(_lines(name, ref, served), on_close=lambda: None)


async def _lines(name: str, ref: str, served: bool):
    yield line({"status": "pulling manifest"})
    if served:
        yield line({"status": "success"})
        return
    watcher = PullProgress(name, ref, asyncio.get_running_loop())
    task = asyncio.ensure_future(asyncio.to_thread(_resolve, ref, watcher.progress))
    task.add_done_callback(watcher.finished)
    try:
        while (update := await watcher.queue.get()) is not None:
            yield line(update)
        task.result()
        for update in DONE:
            yield line(update)
    except Exception as e:
        yield line({"error": stream_error(e).message})
    finally:
        watcher.progress.cancel()  # a client that left stops the download at its next chunk (resumable)


def delete(name: str, registry) -> Response:
    """Reads and removes files: call it off the event loop."""
    from corral.registry.manifests import ManifestRegistry
    from corral.registry.sources import find_stored, parse_ref
    from corral.store import ModelStore
    try:
        served = find_served(registry, name)
    except ModelNotFoundError:
        served = None
    if served is not None:
        raise BadRequestError(f'model "{name}" is served by this server ({served.name}); corral deletes only models '
                              "it does not serve (stop serving it first)", param="model")
    store = ModelStore()
    try:
        copies = find_stored(store, parse_ref(reference(name), ManifestRegistry.load(store.root)),
                             include_partial=True)
    except SourceError:
        copies = []
    if not copies:
        raise ModelNotFoundError(f'model "{name}" not found', param="model")
    in_use = {c.model_dir for c in registry if c.model_dir is not None}
    if any(copy.path in in_use for copy in copies):
        raise BadRequestError(f'model "{name}" is in use by a served model; corral deletes only models it does not '
                              "serve", param="model")
    for copy in copies:
        store.remove(copy)
        logger.info("deleted %s (%s) from the store", copy.name, copy.source)
    return Response(status_code=200)
