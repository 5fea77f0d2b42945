"""What chat and completions share: prompt checks, admission, SSE, disconnects, logprobs, usage."""
import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response, StreamingResponse

from corral.engine.input_processor import ContextLengthError, PromptError, TextTooLongError
from corral.engine.structured_output import GrammarError
from corral.outputs import CompletionOutput, TokenLogprob
from corral.sampling_params import SamplingParams, SamplingParamsError
from corral.server.engine_client import EngineClient
from corral.server.errors import APIError, BadRequestError, InternalServerError
from corral.server.protocol import SamplingFields

logger = logging.getLogger(__name__)

MIN_LOGPROB = -9999.0  # JSON has no -inf


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def arrival_time(request: HTTPRequest) -> float | None:
    """When the server received the request (ArrivalMiddleware's stamp, on time.monotonic())."""
    return getattr(request.state, "arrival_time", None)


def prompt_error(e: PromptError, param: str) -> BadRequestError:
    """The InputProcessor's verdict on a prompt, in OpenAI's words."""
    what = param if param in ("messages", "input") else "prompt"
    if isinstance(e, ContextLengthError) and e.max_tokens == 0:  # an embedding's prompt
        return BadRequestError(
            f"This model's maximum context length is {e.max_model_len} tokens. However, you requested "
            f"{e.num_prompt_tokens} tokens in the {what} for embedding generation. Please reduce the length of the "
            f"{what}.", param=param, code=e.code)
    if isinstance(e, ContextLengthError):
        asked = e.max_tokens or 1
        return BadRequestError(
            f"This model's maximum context length is {e.max_model_len} tokens. However, you requested "
            f"{e.num_prompt_tokens + asked} tokens ({e.num_prompt_tokens} in the {what}, {asked} in the "
            f"completion). Please reduce the length of the {what} or completion.", param=param, code=e.code)
    if isinstance(e, TextTooLongError):
        return BadRequestError(
            f"This model's maximum context length is {e.max_model_len} tokens. However, the {what} has "
            f"{e.num_chars} characters, more than {e.max_model_len} tokens can hold (at most {e.limit}). Please "
            f"reduce the length of the {what}.", param=param, code=e.code)
    return BadRequestError(str(e).replace("the prompt", f"the {what}"), param=param)


def check_prompt(client: EngineClient, prompt_ids: list[int], max_tokens: int | None, param: str) -> int:
    """The max_tokens to use: as asked, or what the context leaves; 400 if the prompt does not fit
    (the model's InputProcessor decides)."""
    valid = max_tokens is None or max_tokens >= 1  # an invalid max_tokens is SamplingParams' to refuse
    try:
        allowed = client.input_processor.check_prompt(prompt_ids, max_tokens if valid else None)
    except PromptError as e:
        raise prompt_error(e, param) from None
    return allowed if valid else max_tokens


def check_num_sequences(client: EngineClient, n: int | None, num_prompts: int = 1) -> int:
    """The sequences a request asks for (n x prompts), which may not be more than the model's queue
    holds: n in the millions would otherwise stall the event loop building them."""
    limit = client.spec.max_pending
    total = (n if n is not None else 1) * num_prompts
    if total > limit:
        what = f"n ({n})" if num_prompts == 1 else f"n ({n}) x prompts ({num_prompts})"
        raise BadRequestError(f"{what} asks for {total} sequences; this model takes at most {limit} in one "
                              f"request (max_num_seqs + max_queue_len)", param="n")
    return total


async def sampling_params(body: SamplingFields, client: EngineClient, max_tokens: int,
                          logprobs: int | None) -> SamplingParams:
    """The request's SamplingParams, checked against the model (a grammar compiled, off the event loop)."""
    try:
        params = body.sampling_params(client.input_processor.sampling_defaults, max_tokens, logprobs)
        if params.structured_outputs is None:
            client.input_processor.check_params(params)
        else:  # a grammar compiles off the event loop
            await asyncio.to_thread(client.input_processor.check_params, params)
    except SamplingParamsError as e:
        raise BadRequestError(str(e), param=e.param) from None
    except GrammarError as e:
        raise BadRequestError(str(e), param=body.structured_output_field()) from None
    except (TypeError, ValueError) as e:
        raise BadRequestError(str(e)) from None
    return params


@dataclass(slots=True)
class Choice:
    """One sequence's output gathered from deltas."""

    index: int
    text: str = ""
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, c: CompletionOutput):
        self.text += c.text
        self.num_tokens += len(c.token_ids)
        self.logprobs.extend(c.logprobs or ())
        if c.finish_reason is not None:
            self.finish_reason, self.stop_reason = c.finish_reason, c.stop_reason


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens the prefix cache already held."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class TokenText:
    """Token ids as the strings logprobs show, cached per tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tokenizer.decode([token_id])
        return text


def chat_logprobs(logprobs: list[TokenLogprob], text: TokenText) -> dict:
    def entry(token_id, logprob):
        s = text(token_id)
        return {"token": s, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(s.encode("utf-8"))}
    return {"content": [{**entry(lp.token_id, lp.logprob),
                         "top_logprobs": [entry(t, v) for t, v in lp.top.items()]} for lp in logprobs]}


def completion_logprobs(logprobs: list[TokenLogprob], text: TokenText, offset: int) -> dict:
    tokens, token_logprobs, top, offsets = [], [], [], []
    for lp in logprobs:
        s = text(lp.token_id)
        tokens.append(s)
        token_logprobs.append(max(lp.logprob, MIN_LOGPROB))
        top.append({text(t): max(v, MIN_LOGPROB) for t, v in lp.top.items()} or None)
        offsets.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def sse(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def end_request(client, streams: list, num_seqs: int):
    """A response's end, however it ended (finished, failed, its client gone, never started): each of its streams
    closed (its request aborted unless it finished) and its admission given back."""
    try:
        for stream in streams:
            try:
                stream.close()
            except Exception:
                logger.exception("closing a stream of model %s failed", client.name)
    finally:
        client.release(num_seqs)


def chunk_writer(request_id: str, kind: str, created: int, model: str, include_usage: bool):
    """SSE chunks of one stream; with include_usage every chunk but the last carries "usage": null."""
    def chunk(choices, **extra) -> str:
        data = {"id": request_id, "object": kind, "created": created, "model": model, "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            data["usage"] = None
        return sse(data)
    return chunk


def sse_error(error: BaseException) -> str:
    error = stream_error(error)
    return sse({**error.body(), "status_code": int(error.status_code)})


def stream_error(error: BaseException) -> APIError:
    """What a stream's client is told of a failure: an APIError as it is, anything else logged and hidden."""
    if not isinstance(error, APIError):
        logger.exception("failure while streaming", exc_info=error)
        error = InternalServerError("internal server error while streaming; see the server log")
    return error


class SSEResponse(StreamingResponse):
    """A text/event-stream whose `on_close` runs however the response ends (even never started)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def until_disconnect(request: HTTPRequest, coro):
    """Run `coro`; cancel it (aborting its generation) if the client disconnects first."""
    task = asyncio.ensure_future(coro)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        logger.info("client disconnected; request aborted")
        return Response(status_code=499)
    return task.result()


async def merged(streams: list):
    """Items of several async iterators as they come, as (stream index, item)."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    q: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, stream):
        try:
            async for item in stream:
                await q.put((i, item))
        except BaseException as e:
            await q.put((i, e))
        finally:
            await q.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await q.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
