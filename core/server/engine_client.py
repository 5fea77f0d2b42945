"""One model's requests as the API process sees them: admitted against its bounded queue, sent to its
engine (engine_lifecycle.py loads and restarts it) and answered through per-request output collectors
fed from the engine's pipe.
"""
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable

from corral.engine.messages import AbortRequests, AddRequests, EngineOutputs, FromEngine, RequestRejected
from corral.outputs import EmbeddingRequestOutput, RequestOutput
from corral.pooling_params import PoolingParams, TaskError
from corral.sampling_params import SamplingParams
from corral.server.engine_lifecycle import EngineLifecycle
from corral.server.engine_process import EngineProcess
from corral.server.errors import BadRequestError, QueueFullError
from corral.server.model_state import ModelState
from corral.server.output_collector import RequestOutputCollector


class EngineClient(EngineLifecycle):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_pending = 0                # requests admitted and not yet released
        self.num_pending_seqs = 0           # their sequences: what the queue bound counts
        self.last_used = time.monotonic()
        self._collectors: dict[str, RequestOutputCollector] = {}

    def _handle(self, engine: EngineProcess, message: FromEngine):
        if isinstance(message, EngineOutputs):
            results, to_abort = self.output_processor.process(message.outputs)
            for result in results:
                if (collector := self._collectors.get(result.request_id)) is not None:
                    collector.put(result)
            if to_abort:
                self.engine.send(AbortRequests(to_abort))
            self.stats = message.stats
        elif isinstance(message, RequestRejected):
            request_id = self.output_processor.parent_id(message.request_id)
            if request_id is not None:
                self._fail(request_id, BadRequestError(message.message, param="prompt"))
        else:
            super()._handle(engine, message)

    def _fail(self, request_id: str, error: Exception):
        if self.output_processor is not None and self.output_processor.has_request(request_id):
            self.engine.send(AbortRequests(self.output_processor.child_ids(request_id)))
            self.output_processor.abort(request_id)
        if (collector := self._collectors.get(request_id)) is not None:
            collector.put(error)

    def _fail_all(self, make_error: Callable[[], Exception]):
        for request_id in list(self._collectors):
            self._fail(request_id, make_error())

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

    def generate(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                 timeout: float = 600.0, cache_salt: str | None = None,
                 arrival_time: float | None = None) -> "OutputStream":
        """Delta outputs of one admitted request until it finishes. The request goes to the engine now if the
        model is ready, so that a burst's requests reach the engine as each is validated, not as each response
        starts; else at the first read, once the model is. Leaving a read early aborts it, and so does the
        stream's close(), read or not: whoever makes a stream closes it when its response ends. Only requests
        with the same `cache_salt` share prefix-cache blocks. `arrival_time`: when the server received the
        request (time.monotonic()), now if not given; its latencies are measured from it."""
        start = time.monotonic() if arrival_time is None else arrival_time
        try:
            collector = (self._send(request_id, prompt, prompt_ids, params, start, cache_salt)
                         if self.state == ModelState.READY else None)
        except Exception:
            if self.metrics is not None:
                self.metrics.requests_finished.labels(self.name, "error").inc()
            raise
        return OutputStream(self._outputs(request_id, prompt, prompt_ids, params, timeout, cache_salt, start,
                                          collector), functools.partial(self._forget, request_id))

    async def _outputs(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                       timeout: float, cache_salt: str | None, start: float,
                       collector: RequestOutputCollector | None) -> AsyncIterator[RequestOutput]:
        first_token, generated = None, 0
        try:
            if collector is None:
                await self.wait_ready(timeout)
            async with contextlib.aclosing(self._stream(request_id, prompt, prompt_ids, params, start,
                                                        cache_salt, collector)) as outputs:
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

    def _send(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
              arrival: float, cache_salt: str | None) -> RequestOutputCollector | None:
        """Hand one request to the engine; the collector its outputs will arrive in."""
        collector = RequestOutputCollector()
        child_ids = self.output_processor.add_request(request_id, prompt, prompt_ids, params, delta=True)
        try:
            self._collectors[request_id] = collector
            self.engine.send(AddRequests(self.input_processor.engine_requests(child_ids, prompt_ids, params, arrival,
                                                                              cache_salt)))
        except BaseException:
            self._forget(request_id)
            raise
        return collector

    async def _stream(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                      arrival: float, cache_salt: str | None,
                      collector: RequestOutputCollector | None) -> AsyncIterator[RequestOutput]:
        """The engine's delta outputs of one request, up to the finished one, from `collector` (None: the request
        is sent first); closing early aborts it. With _send, the steps a client of another transport
        (corral.integrations.ray) does its own way."""
        registered = False
        try:
            if collector is None:
                collector = self._send(request_id, prompt, prompt_ids, params, arrival, cache_salt)
            registered = True
            while True:
                item = await collector.get()
                if isinstance(item, BaseException):
                    registered = False
                    raise item
                registered = not item.finished
                yield item
                if item.finished:
                    return
        finally:
            if registered:
                self._forget(request_id)
            else:
                self._collectors.pop(request_id, None)

    def _forget(self, request_id: str):
        """A request whose reader is gone: aborted unless it finished, its collector dropped. One that finished
        in the engine but was not read to its end counts as aborted: its client did not get it."""
        unread = self._collectors.pop(request_id, None) is not None
        if self.output_processor is not None and self.output_processor.has_request(request_id):
            self.abort(request_id)
        elif unread and self.metrics is not None:
            self.metrics.requests_finished.labels(self.name, "abort").inc()

    async def embed(self, request_id: str, prompt_ids: list[int], params: PoolingParams, timeout: float = 600.0,
                    cache_salt: str | None = None, arrival_time: float | None = None) -> EmbeddingRequestOutput:
        """The pooled vector of one admitted embedding request; leaving early aborts it. `arrival_time` as
        generate's."""
        start = time.monotonic() if arrival_time is None else arrival_time
        collector = RequestOutputCollector()
        registered = False
        try:
            await self.wait_ready(timeout)
            self.output_processor.add_pooling_request(request_id, prompt_ids)
            self._collectors[request_id], registered = collector, True
            self.engine.send(AddRequests([self.input_processor.pooling_request(request_id, prompt_ids, params, start,
                                                                               cache_salt)]))
            item = await collector.get()
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
            self._collectors.pop(request_id, None)
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


class OutputStream:
    """One request's delta outputs: read them once with `async for`; close() aborts the request unless it
    finished, whether or not it was read (idempotent)."""

    __slots__ = ("_outputs", "close")

    def __init__(self, outputs: AsyncIterator[RequestOutput], close: Callable[[], None]):
        self._outputs, self.close = outputs, close

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._outputs
