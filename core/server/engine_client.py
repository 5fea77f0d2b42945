"""One model as the API process sees it: its files, input and output processors, and its engine
process, restarted when it dies. Requests get per-request asyncio queues fed from the engine's pipe.
"""
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from corral.engine.input_processor import InputProcessor
from corral.engine.messages import (AbortRequests, AddRequests, EngineExited, EngineFailed, EngineMemory,
                                    EngineOutputs, EngineReady, FromEngine, RequestRejected, SchedulerStats, Sleep,
                                    SleepDone, Wake)
from corral.engine.output_processor import OutputProcessor
from corral.outputs import EmbeddingRequestOutput, RequestOutput
from corral.pooling_params import PoolingParams, TaskError
from corral.sampling_params import SamplingParams
from corral.server.config import ModelSpec
from corral.server.engine_process import EngineProcess
from corral.server.errors import (BadRequestError, EngineDeadError, InternalServerError, ModelUnavailableError,
                                  QueueFullError, is_local_path, without_paths)
from corral.server.model_files import ModelFiles, resolve_model_dir
from corral.server.model_state import ModelState

logger = logging.getLogger(__name__)


def restart_delay(num_crashes: int, base: float, cap: float) -> float:
    """Seconds to wait before restarting an engine that died num_crashes times within the crash window:
    none after one death, then base, 2 x base, 4 x base ... up to cap."""
    return 0.0 if num_crashes <= 1 else min(base * 2 ** (num_crashes - 2), cap)


class EngineClient:
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
        self.engine_overrides: dict = {}    # engine settings the memory budget decides (its KV cache size)
        self.waiting_for: str | None = None  # while a load waits for memory: what holds it
        self.restarts = 0
        self.num_pending = 0                # requests admitted and not yet released
        self.num_pending_seqs = 0           # their sequences: what the queue bound counts
        self.last_used = time.monotonic()
        self.output_processor: OutputProcessor | None = None
        self.engine: EngineProcess | None = None
        self._queues: dict[str, asyncio.Queue] = {}
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

    # lifecycle

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
            self.engine = EngineProcess(self.name, str(self.model_dir), engine_args, self.num_threads,
                                        self.log_level, asyncio.get_running_loop(), self._on_message,
                                        self.spec.devices)
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
        if isinstance(message, EngineOutputs):
            results, to_abort = self.output_processor.process(message.outputs)
            for result in results:
                if (q := self._queues.get(result.request_id)) is not None:
                    q.put_nowait(result)
            if to_abort:
                self.engine.send(AbortRequests(to_abort))
            self.stats = message.stats
        elif isinstance(message, RequestRejected):
            request_id = self.output_processor.parent_id(message.request_id)
            if request_id is not None:
                self._fail(request_id, BadRequestError(message.message, param="prompt"))
        elif isinstance(message, EngineReady):
            self.input_processor.max_model_len = message.max_model_len
            self.input_processor.vocab_size = message.vocab_size
            self.engine_ready = message
            self.stats = SchedulerStats(num_kv_blocks=message.num_kv_blocks,
                                        num_free_kv_blocks=message.num_kv_blocks)
            self.state, self.error, self.settled_once = ModelState.READY, None, True
            self._settled.set()
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
        if self._closing or self.state in (ModelState.UNLOADED, ModelState.ERROR):
            asyncio.get_running_loop().run_in_executor(None, engine.stop, 1)  # reap it
            return
        crashed = self.state in (ModelState.READY, ModelState.RESTARTING, ModelState.SLEEPING)  # it had served
        self._fail_all(lambda: EngineDeadError(f"the engine of model {self.name} died; the request was not "
                                               "completed (the engine is restarting, retry shortly)"))
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # it waits for a ready message this engine will never send
        self.state, self.stats = (ModelState.RESTARTING if crashed else ModelState.LOADING), None
        self._settled.clear()
        self._exit_task = asyncio.create_task(self._after_exit(engine, crashed))

    async def _after_exit(self, engine: EngineProcess, crashed: bool):
        await asyncio.to_thread(engine.stop, 1)
        code = engine.process.exitcode
        if not crashed:
            self._set_error(f"the engine exited while loading (exit code {code})")
            return
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < self.crash_window] + [now]
        delay = restart_delay(len(self._crashes), self.restart_backoff, self.max_restart_backoff)
        logger.error("engine of %s died (exit code %s; %d time(s) in %.0f s); restarting in %.0f s", self.name,
                     code, len(self._crashes), self.crash_window, delay)
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

    def _fail(self, request_id: str, error: Exception):
        if self.output_processor is not None and self.output_processor.has_request(request_id):
            self.engine.send(AbortRequests(self.output_processor.child_ids(request_id)))
            self.output_processor.abort(request_id)
        if (q := self._queues.get(request_id)) is not None:
            q.put_nowait(error)

    def _fail_all(self, make_error):
        for request_id in list(self._queues):
            self._fail(request_id, make_error())

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

    # requests

    async def admit(self, timeout: float, num_seqs: int = 1, task: str = "generate"):
        """Count a request of num_seqs sequences (n x prompts) against the bounded queue, which holds
        max_num_seqs + max_queue_len sequences (429 past it), and wait for the model to be ready; 400
        unless the model serves `task` (generate, or embed). Every successful admit is paired with one
        release(num_seqs)."""
        if self.num_pending_seqs and self.num_pending_seqs + num_seqs > self.spec.max_pending:
            raise QueueFullError(f"model {self.name} has {self.num_pending_seqs} sequences in flight; with this "
                                 f"request's {num_seqs} it would pass its limit (max_num_seqs "
                                 f"{self.spec.max_num_seqs} + max_queue_len {self.spec.max_queue_len}); retry later")
        self.num_pending += 1
        self.num_pending_seqs += num_seqs
        self.last_used = time.monotonic()
        try:
            await self.wait_ready(timeout)
            self.input_processor.check_task(task, self.name)
        except TaskError as e:
            self.release(num_seqs)
            raise BadRequestError(str(e), param="model", code="model_not_supported") from None
        except BaseException:
            self.release(num_seqs)
            raise

    def release(self, num_seqs: int = 1):
        self.num_pending -= 1
        self.num_pending_seqs -= num_seqs
        self.last_used = time.monotonic()

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

    async def generate(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                       timeout: float = 600.0, cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """Delta outputs of one admitted request until it finishes; leaving early aborts it. Only
        requests with the same `cache_salt` share prefix-cache blocks."""
        start = time.monotonic()
        first_token, generated = None, 0
        try:
            await self.wait_ready(timeout)
            async with contextlib.aclosing(self._stream(request_id, prompt, prompt_ids, params, start,
                                                        cache_salt)) as outputs:
                async for item in outputs:
                    generated += sum(len(c.token_ids) for c in item.outputs)
                    if first_token is None and generated:
                        first_token = time.monotonic()
                    if item.finished and self.metrics is not None:
                        reason = next((c.finish_reason for c in item.outputs if c.finish_reason), "stop")
                        self.metrics.observe_finished(self.name, reason, len(prompt_ids), generated,
                                                      first_token - start if first_token else None,
                                                      time.monotonic() - start)
                    yield item
        except Exception:
            if self.metrics is not None:
                self.metrics.requests_finished.labels(self.name, "error").inc()
            raise

    async def _stream(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                      arrival: float, cache_salt: str | None) -> AsyncIterator[RequestOutput]:
        """The engine's delta outputs of one request, up to the finished one; closing early aborts it.
        The one step a client of another transport (corral.integrations.ray) does its own way."""
        registered = False
        q: asyncio.Queue = asyncio.Queue()
        try:
            child_ids = self.output_processor.add_request(request_id, prompt, prompt_ids, params, delta=True)
            self._queues[request_id], registered = q, True
            self.engine.send(AddRequests(self.input_processor.engine_requests(child_ids, prompt_ids, params, arrival,
                                                                              cache_salt)))
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    registered = False
                    raise item
                registered = not item.finished
                yield item
                if item.finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if registered:
                self.abort(request_id)

    async def embed(self, request_id: str, prompt_ids: list[int], params: PoolingParams, timeout: float = 600.0,
                    cache_salt: str | None = None) -> EmbeddingRequestOutput:
        """The pooled vector of one admitted embedding request; leaving early aborts it."""
        start = time.monotonic()
        q: asyncio.Queue = asyncio.Queue()
        registered = False
        try:
            await self.wait_ready(timeout)
            self.output_processor.add_pooling_request(request_id, prompt_ids)
            self._queues[request_id], registered = q, True
            self.engine.send(AddRequests([self.input_processor.pooling_request(request_id, prompt_ids, params, start,
                                                                               cache_salt)]))
            item = await q.get()
            registered = False
            if isinstance(item, BaseException):
                raise item
            if self.metrics is not None:
                elapsed = time.monotonic() - start
                self.metrics.observe_finished(self.name, "stop", len(prompt_ids), 0, elapsed, elapsed)
            return item
        except Exception:
            if self.metrics is not None:
                self.metrics.requests_finished.labels(self.name, "error").inc()
            raise
        finally:
            self._queues.pop(request_id, None)
            if registered:
                self.abort(request_id)

    def abort(self, request_id: str):
        if self.output_processor is None or not self.output_processor.has_request(request_id):
            return
        child_ids = self.output_processor.child_ids(request_id)
        self.output_processor.abort(request_id)
        self.engine.send(AbortRequests(child_ids))
        if self.metrics is not None:
            self.metrics.requests_finished.labels(self.name, "abort").inc()
