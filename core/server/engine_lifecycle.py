"""A model's engine as the API process sees it: its files, input and output processors, and its engine
process through the states it moves between (loading, ready, sleeping, restarting when it dies,
unloaded, error). The requests on it are EngineClient's (engine_client.py).
"""
import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from corral.engine.input_processor import InputProcessor
from corral.engine.messages import (EngineExited, EngineFailed, EngineMemory, EngineReady, FromEngine, SchedulerStats,
                                    Sleep, SleepDone, Wake)
from corral.engine.output_processor import OutputProcessor
from corral.server.config import ModelSpec
from corral.server.engine_process import EngineProcess
from corral.server.errors import (EngineDeadError, InternalServerError, ModelUnavailableError, is_local_path,
                                  without_paths)
from corral.server.heap import refreeze
from corral.server.model_files import ModelFiles, resolve_model_dir
from corral.server.model_state import ModelState

logger = logging.getLogger(__name__)


def restart_delay(num_crashes: int, base: float, cap: float) -> float:
    """Seconds to wait before restarting an engine that died num_crashes times within the crash window:
    none after one death, then base, 2 x base, 4 x base ... up to cap."""
    return 0.0 if num_crashes <= 1 else min(base * 2 ** (num_crashes - 2), cap)


class EngineLifecycle(ABC):
    """Loads, restarts, puts to sleep, wakes and unloads one model's engine. The subclass that serves
    requests on it counts them in num_pending (no unload or sleep while any), handles the engine's
    messages about them and fails them all when the engine goes."""
    num_pending: int
    crash_window = 600.0        # engine deaths this recent count towards the backoff and `failing`
    restart_backoff = 1.0
    max_restart_backoff = 60.0

    def __init__(self, spec: ModelSpec, metrics=None, plugin_manager=None, num_threads: int | None = None,
                 log_level: int = logging.INFO, files_lock=None):
        self.spec, self.name = spec, spec.name
        self.files_lock = files_lock or threading.Lock()
        self.metrics = metrics
        self.plugin_manager = plugin_manager
        self.num_threads = spec.num_threads or num_threads
        self.log_level = log_level
        self.state = ModelState.UNLOADED
        self.error: str | None = None      # for clients: names the model, never its directory
        self.settled_once = False          # reached ready or error at least once
        self.progress = None               # a DownloadProgress while resolving
        self.model_dir: Path | None = None
        self.input_processor: InputProcessor | None = None
        self.reasoning_parser: str | None = None
        self.tool_parser: type | None = None       # None: the generic JSON format
        self.json_tool_parser: type | None = None
        self.stats: SchedulerStats | None = None
        self.engine_ready: EngineReady | None = None  # its engine's sizes, and the memory it holds
        self.make_room = None               # under a memory budget: awaited before its engine starts
        self.spares = None                  # EngineSpares: processes started ahead, for loads on demand
        self.engine_overrides: dict = {}    # engine settings the memory budget decides (its KV cache size)
        self.waiting_for: str | None = None  # while a load waits for memory: what holds it
        self.restarts = 0
        self.output_processor: OutputProcessor | None = None
        self.engine: EngineProcess | None = None
        self._settled = asyncio.Event()    # set while ready or error
        self._load_task: asyncio.Task | None = None
        self._closing = False
        self._crashes: list[float] = []
        self._exit_task: asyncio.Task | None = None
        self.asleep = False                 # its engine sleeps: the next load wakes it
        self._sleep_lock = asyncio.Lock()   # one Sleep or Wake at a time, each awaiting its SleepDone
        self._sleep_reply: asyncio.Future | None = None

    @property
    def pid(self) -> int | None:
        return self.engine.pid if self.engine is not None and self.state == ModelState.READY else None

    @property
    def crashes(self) -> int:
        """Engine deaths within the last crash_window seconds."""
        now = time.monotonic()
        return sum(1 for t in self._crashes if now - t < self.crash_window)

    @property
    def failing(self) -> bool:
        """Its engine died more than once within the crash window, or it could not load."""
        return self.state == ModelState.ERROR or self.crashes > 1

    @property
    def tokenizer(self):
        return self.input_processor.tokenizer if self.input_processor is not None else None

    @property
    def max_model_len(self) -> int | None:
        return self.input_processor.max_model_len if self.input_processor is not None else None

    def load(self):
        """Start loading unless loading or loaded."""
        if self._closing or self.state not in (ModelState.UNLOADED, ModelState.ERROR, ModelState.SLEEPING):
            return
        self._start_load(ModelState.LOADING)

    def _start_load(self, state: ModelState):
        if self._load_task is None or self._load_task.done():
            self._settled.clear()
            self.state = state
            self._load_task = asyncio.create_task(self._load(), name=f"load-{self.name}")

    async def _load(self):
        try:
            if self.input_processor is None:
                await asyncio.to_thread(self._prepare)
            if self.state != ModelState.RESTARTING:
                self.state = ModelState.LOADING
            if self.make_room is not None and not await self.make_room(self):
                self.state = ModelState.SLEEPING if self.asleep else ModelState.UNLOADED  # no room, no request waits
                return
            if self.asleep:
                await self._wake()
                return
            engine_args = dict(self.spec.engine_args(), max_model_len=self.max_model_len,  # capped by _prepare
                               **self.engine_overrides)
            spare = self.spares.take() if self.spares is not None and self.spec.devices is None else None
            self.engine = EngineProcess(self.name, str(self.model_dir), engine_args, self.num_threads,
                                        self.log_level, asyncio.get_running_loop(), self._on_message,
                                        self.spec.devices, spare)
            self.output_processor = OutputProcessor(self.tokenizer)
            await asyncio.to_thread(self.engine.start)
            try:
                await asyncio.wait_for(self._settled.wait(), self.spec.startup_timeout)
            except asyncio.TimeoutError:
                self._set_error(f"the engine did not start within {self.spec.startup_timeout:.0f} s")
                await asyncio.to_thread(self.engine.stop, 0)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set_error(str(e) or type(e).__name__)

    def _prepare(self):
        with self.files_lock:  # transformers' lazy imports are not thread-safe
            files = ModelFiles.read(self._resolve_model_dir(), self.spec, self.plugin_manager)
        self.model_dir, self.reasoning_parser = files.model_dir, files.reasoning_parser
        self.tool_parser, self.json_tool_parser = files.tool_parser, files.json_tool_parser
        self.input_processor = files.input_processor

    def _resolve_model_dir(self) -> Path:
        """The model's local directory, downloaded first when the reference is not one."""
        if not Path(self.spec.model).is_dir():
            try:
                from corral.progress import DownloadProgress
                self.progress = DownloadProgress(name=self.name)
            except ImportError:
                pass
            self.state = ModelState.DOWNLOADING
        return resolve_model_dir(self.spec, self.plugin_manager, self.progress)

    def _on_message(self, engine: EngineProcess, message: FromEngine):
        if engine is not self.engine:
            return  # from an engine already replaced
        try:
            self._handle(engine, message)
        except Exception:  # never leave requests waiting on outputs that will not come
            logger.exception("model %s: cannot handle the engine's %s", self.name, type(message).__name__)
            self._fail_all(lambda: InternalServerError(f"model {self.name}: internal error; see the server log"))

    def _handle(self, engine: EngineProcess, message: FromEngine):
        if isinstance(message, EngineReady):
            self.input_processor.max_model_len = message.max_model_len
            self.input_processor.vocab_size = message.vocab_size
            self.engine_ready = message
            self.stats = SchedulerStats(num_kv_blocks=message.num_kv_blocks,
                                        num_free_kv_blocks=message.num_kv_blocks)
            first_ready = not self.settled_once
            self.state, self.error, self.settled_once = ModelState.READY, None, True
            self._settled.set()
            if first_ready:  # its tokenizer and the modules loading it imported, once: a refreeze stops the loop
                refreeze()
            logger.info("model %s is ready (engine pid %s, %d KV blocks)", self.name, engine.pid,
                        message.num_kv_blocks)
        elif isinstance(message, EngineFailed) and self.state in (ModelState.READY, ModelState.RESTARTING):
            logger.error("engine of %s failed: %s", self.name, message.message)  # its exit restarts it
            self.state = ModelState.RESTARTING  # new requests wait for the next engine, not this dying one
            self._settled.clear()
            self._fail_all(lambda: EngineDeadError(f"the engine of model {self.name} failed; the request was "
                                                   "not completed (the engine is restarting, retry shortly)"))
        elif isinstance(message, EngineFailed):
            self._set_error(message.message)
        elif isinstance(message, SleepDone):
            if self._sleep_reply is not None and not self._sleep_reply.done():
                self._sleep_reply.set_result(message)
        elif isinstance(message, EngineExited):
            self._on_engine_exit(engine)

    def _on_engine_exit(self, engine: EngineProcess):
        if self._sleep_reply is not None and not self._sleep_reply.done():
            self._sleep_reply.set_result(SleepDone(False, EngineMemory(), "its engine exited"))
        self.asleep = False
        if self._closing:  # shutdown stops it, and the loop's executor may be gone already
            return
        if self.state in (ModelState.UNLOADED, ModelState.ERROR):
            asyncio.get_running_loop().run_in_executor(None, engine.stop, 1)  # reap it
            return
        crashed = self.state in (ModelState.READY, ModelState.RESTARTING, ModelState.SLEEPING)  # it had served
        self._fail_all(lambda: EngineDeadError(f"the engine of model {self.name} died; the request was not "
                                               "completed (the engine is restarting, retry shortly)"))
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # it waits for a ready message this engine will never send
        self.state, self.stats = (ModelState.RESTARTING if crashed else ModelState.LOADING), None
        if crashed:  # counted with the state's change, so /health never shows one without the other
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if now - t < self.crash_window] + [now]
        self._settled.clear()
        self._exit_task = asyncio.create_task(self._after_exit(engine, crashed))

    async def _after_exit(self, engine: EngineProcess, crashed: bool):
        await asyncio.to_thread(engine.stop, 1)
        code = engine.process.exitcode
        if not crashed:
            self._set_error(f"the engine exited while loading (exit code {code})")
            return
        delay = restart_delay(self.crashes, self.restart_backoff, self.max_restart_backoff)
        logger.error("engine of %s died (exit code %s; %d time(s) in %.0f s); restarting in %.0f s", self.name,
                     code, self.crashes, self.crash_window, delay)
        self.restarts += 1
        if self.metrics is not None:
            self.metrics.engine_restarts.labels(self.name).inc()
        await asyncio.sleep(delay)
        if not self._closing:
            self._start_load(ModelState.RESTARTING)

    def _set_error(self, message: str):
        logger.error("model %s failed to load: %s", self.name, message)
        message = without_paths(message, self._own_paths())
        self.state, self.error, self.settled_once = ModelState.ERROR, message, True
        self._fail_all(lambda: ModelUnavailableError(f"model {self.name} failed to load: {message}"))
        self._settled.set()

    def _own_paths(self) -> dict[str, str]:
        """This model's directories as clients may see them: by the model's name."""
        shown = f"the directory of model {self.name}"
        paths = {self.spec.model: shown} if is_local_path(self.spec.model) else {}
        if self.model_dir is not None:
            paths[str(self.model_dir)] = shown
        return paths

    @abstractmethod
    def _fail_all(self, make_error: Callable[[], Exception]):
        """End every request in flight with its own make_error()."""

    async def unload(self):
        """Stop the engine, keeping the files and tokenizer: the next request loads it again."""
        if self.state not in (ModelState.READY, ModelState.SLEEPING) or self.num_pending:
            return
        self.asleep = False
        logger.info("unloading idle model %s", self.name)
        self.state, self.stats = ModelState.UNLOADED, None
        self._settled.clear()
        engine, self.engine = self.engine, None  # its exit, still on its way, is no failure of a load it meets
        await asyncio.to_thread(engine.stop, 10)

    async def sleep(self) -> bool:
        """Put the idle model to sleep: its engine frees its device memory and keeps its process and the
        weights in host memory; the next request (or load) wakes it. False unless it was ready and idle."""
        if self.state != ModelState.READY or self.num_pending:
            return False
        logger.info("putting model %s to sleep", self.name)
        self.state, self.asleep = ModelState.SLEEPING, True  # a load from now on wakes it
        self._settled.clear()
        done = await self._ask(Sleep())
        self.asleep = done.asleep
        if done.error is not None:
            logger.warning("model %s cannot sleep: %s", self.name, done.error)
            if self.state == ModelState.SLEEPING:
                self.state = ModelState.READY
                self._settled.set()
        return done.error is None

    async def _wake(self):
        done = await self._ask(Wake())
        self.asleep = done.asleep
        if done.error is not None or done.asleep:
            self._set_error(f"could not wake: {done.error}")
            return
        logger.info("model %s is awake", self.name)
        self.state, self.error = ModelState.READY, None
        self._settled.set()

    async def _ask(self, message: Sleep | Wake) -> SleepDone:
        async with self._sleep_lock:
            self._sleep_reply = asyncio.get_running_loop().create_future()
            self.engine.send(message)
            return await self._sleep_reply

    async def shutdown(self, timeout: float = 10.0):
        self._closing = True
        if self.progress is not None:  # a download in its worker thread stops at its next chunk, resumable
            self.progress.cancel()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self._exit_task is not None and not self._exit_task.done():
            self._exit_task.cancel()
        self.fail_in_flight("the server is shutting down")
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop, timeout)

    def fail_in_flight(self, message: str):
        """End every running request with a 503 saying `message` (streams end with an error event)."""
        self._fail_all(lambda: ModelUnavailableError(message))

    async def wait_ready(self, timeout: float):
        if self.state == ModelState.READY:
            return
        if self.state == ModelState.ERROR:
            raise ModelUnavailableError(f"model {self.name} is unavailable: {self.error}")
        self.load()
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            waiting = f"waiting for memory: {self.waiting_for}" if self.waiting_for else "still loading"
            raise ModelUnavailableError(f"model {self.name} is {waiting}; retry later") from None
        if self.state != ModelState.READY:
            raise ModelUnavailableError(f"model {self.name} is unavailable: {self.error or self.state}")
