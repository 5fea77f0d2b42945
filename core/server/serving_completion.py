"""POST /v1/completions: one or several prompts (text or token ids), n choices each, JSON or SSE."""
import functools

from starlette.requests import Request as HTTPRequest

from corral.server.auth import cache_salt
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError
from corral.server.limits import Tokenization
from corral.server.protocol import CompletionRequest
from corral.server.serving import (Choice, SSEResponse, TokenText, arrival_time, check_num_sequences, check_prompt,
                                   chunk_writer, completion_logprobs, end_request, merged, now, random_id,
                                   sampling_params, sse, sse_error, until_disconnect, usage)

DEFAULT_MAX_TOKENS = 16


def _encode(client: EngineClient, prompts: list, tokenization: Tokenization) -> list[tuple[str | None, list[int]]]:
    """(text, token ids) of each prompt; token-id prompts have no text. Every text is measured before any is
    encoded."""
    for p in prompts:
        if isinstance(p, str):
            tokenization.check_length(client, p, "prompt")
    return [(p, tokenization.encode(client, p, "prompt")) if isinstance(p, str) else (None, list(p)) for p in prompts]


async def create_completion(body: CompletionRequest, client: EngineClient, request: HTTPRequest,
                            load_timeout: float):
    body.check()
    body.check_stream_options()
    body.check_unsupported()
    if body.echo and body.logprobs is not None:
        raise BadRequestError("echo with logprobs is not supported (prompt logprobs are not computed)",
                              param="echo")
    prompts = body.prompts()
    tokenization = request.app.state.tokenization
    num_seqs = check_num_sequences(client, body.n, len(prompts))
    await client.admit(load_timeout, num_seqs)
    streams = []
    end = functools.partial(end_request, client, streams, num_seqs)
    try:
        if any(isinstance(p, str) for p in prompts):
            encoded = await tokenization.run(_encode, client, prompts, tokenization)
        else:  # token ids need no tokenizer, so no worker thread (whose turn at the interpreter can lag)
            encoded = _encode(client, prompts, tokenization)
        max_tokens = body.max_tokens
        if max_tokens is None:
            max_tokens = client.input_processor.defaults.get("max_tokens", DEFAULT_MAX_TOKENS)
        limits = [check_prompt(client, ids, max_tokens, "prompt") for _, ids in encoded]
        params = [await sampling_params(body, client, limit, body.logprobs) for limit in limits]
        echoes = [_echo_text(client, text, ids) if body.echo else "" for text, ids in encoded]
        request_id = random_id("cmpl")
        salt = cache_salt(request, body.cache_salt)
        arrival = arrival_time(request)
        for i, ((text, ids), p) in enumerate(zip(encoded, params)):
            streams.append(client.generate(f"{request_id}-{i}", text, ids, p, load_timeout, salt, arrival))
    except BaseException:
        end()
        raise
    n = params[0].n
    prompt_tokens = sum(len(ids) for _, ids in encoded)
    if body.stream:
        return SSEResponse(_stream(body, client, request_id, n, streams, echoes, prompt_tokens), on_close=end)
    try:
        return await until_disconnect(request, _collect(body, client, request_id, n, streams, echoes,
                                                        prompt_tokens))
    finally:
        end()


def _echo_text(client: EngineClient, text: str | None, ids: list[int]) -> str:
    return text if text is not None else client.tokenizer.decode(ids)


async def _collect(body, client, request_id, n, streams, echoes, prompt_tokens) -> dict:
    choices, cached = [Choice(i) for i in range(n * len(streams))], [0] * len(streams)
    async for p, out in merged(streams):
        cached[p] = out.num_cached_tokens
        for c in out.outputs:
            choices[p * n + c.index].add(c)
    token_text = TokenText(client.tokenizer)
    result = []
    for ch in choices:
        echo = echoes[ch.index // n]
        result.append({"index": ch.index, "text": echo + ch.text,
                       "logprobs": (completion_logprobs(ch.logprobs, token_text, len(echo))
                                    if body.logprobs is not None else None),
                       "finish_reason": ch.finish_reason, "stop_reason": ch.stop_reason})
    return {"id": request_id, "object": "text_completion", "created": now(), "model": client.name,
            "choices": result, "usage": usage(prompt_tokens, sum(ch.num_tokens for ch in choices), sum(cached))}


async def _stream(body, client, request_id, n, streams, echoes, prompt_tokens):
    created, include_usage = now(), body.include_usage
    token_text = TokenText(client.tokenizer)
    offsets = [len(echoes[i // n]) for i in range(n * len(streams))]
    pending_echo = [bool(echoes[i // n]) for i in range(n * len(streams))]
    completion_tokens, cached = 0, [0] * len(streams)

    chunk = chunk_writer(request_id, "text_completion", created, client.name, include_usage)
    ending, unfinished = "", len(streams)  # the last output's chunks go with the usage and [DONE] in one write

    try:
        async for p, out in merged(streams):
            cached[p] = out.num_cached_tokens
            unfinished -= out.finished
            for c in out.outputs:
                index = p * n + c.index
                completion_tokens += len(c.token_ids)
                text = c.text
                if pending_echo[index]:
                    text, pending_echo[index] = echoes[p] + text, False
                if not text and not c.finished and not c.logprobs:
                    continue
                logprobs = None
                if body.logprobs is not None:
                    logprobs = completion_logprobs(c.logprobs or [], token_text, offsets[index])
                offsets[index] += len(c.text)
                piece = chunk([{"index": index, "text": text, "logprobs": logprobs,
                                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}])
                if unfinished:
                    yield piece
                else:
                    ending += piece
        if include_usage:
            ending += chunk([], usage=usage(prompt_tokens, completion_tokens, sum(cached)))
    except Exception as e:
        ending += sse_error(e)
    yield ending + sse("[DONE]")
