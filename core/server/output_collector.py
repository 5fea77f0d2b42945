"""One request's outputs between the engine's pipe and the coroutine that answers it (vLLM's
RequestOutputCollector). A delta that arrives while the previous one is still unread is merged into it, so a
stream that falls behind the engine catches up in one chunk instead of one chunk per step; one that keeps up
still gets every step's delta on its own.
"""
import asyncio

from corral.outputs import CompletionOutput, EmbeddingRequestOutput, RequestOutput

Item = RequestOutput | EmbeddingRequestOutput | BaseException


class RequestOutputCollector:
    def __init__(self):
        self._pending: Item | None = None
        self._ready = asyncio.Event()

    def put(self, item: Item):
        """An error replaces whatever is unread: the request ends with it."""
        if isinstance(self._pending, RequestOutput) and isinstance(item, RequestOutput):
            merge_delta(self._pending, item)
        elif not isinstance(self._pending, BaseException):
            self._pending = item
        self._ready.set()

    async def get(self) -> Item:
        while self._pending is None:
            await self._ready.wait()
        item, self._pending = self._pending, None
        self._ready.clear()
        return item


def merge_delta(into: RequestOutput, later: RequestOutput):
    """Append the delta output `later` to the unread delta `into` of the same request."""
    by_index = {c.index: c for c in into.outputs}
    for c in later.outputs:
        if (first := by_index.get(c.index)) is None:
            into.outputs.append(c)
        else:
            _append(first, c)
    into.finished = later.finished
    into.num_cached_tokens = later.num_cached_tokens


def _append(into: CompletionOutput, later: CompletionOutput):
    into.text += later.text
    into.token_ids = into.token_ids + later.token_ids
    if later.logprobs is not None:
        into.logprobs = (into.logprobs or []) + later.logprobs
    into.cumulative_logprob = later.cumulative_logprob
    into.finish_reason, into.stop_reason = later.finish_reason, later.stop_reason
