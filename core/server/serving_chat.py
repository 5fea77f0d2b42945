"""POST /v1/chat/completions: chat template, generation, reasoning split, JSON or SSE chunks."""
import functools

from starlette.requests import Request as HTTPRequest

from corral.engine.tokenizer import ChatTemplateError
from corral.server.auth import cache_salt
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError
from corral.server.limits import Tokenization
from corral.server.protocol import ChatCompletionRequest
from corral.server.reasoning import ReasoningParser, prompt_opens_reasoning, split_reasoning
from corral.server.serving import (Choice, SSEResponse, TokenText, chat_logprobs, check_num_sequences, check_prompt,
                                   chunk_writer, now, random_id, sampling_params, sse, sse_error, until_disconnect,
                                   usage)


def render_prompt(client: EngineClient, body: ChatCompletionRequest, template_kwargs: dict,
                  tokenization: Tokenization) -> tuple[str, list[int]]:
    try:
        prompt = client.input_processor.render_chat(body.message_dicts(), body.add_generation_prompt is not False,
                                                    template_kwargs)
    except ChatTemplateError as e:
        param = "chat_template" if "chat_template" in template_kwargs else "messages"
        raise BadRequestError(str(e), param=param) from None
    return prompt, tokenization.encode(client, prompt, "messages", add_special_tokens=False)


async def create_chat_completion(body: ChatCompletionRequest, client: EngineClient, request: HTTPRequest,
                                 load_timeout: float):
    body.check_stream_options()
    body.check_unsupported()
    config, tokenization = request.app.state.config, request.app.state.tokenization
    template_kwargs = body.template_kwargs(config.trust_request_chat_template)
    num_seqs = check_num_sequences(client, body.n)
    logprobs = body.requested_logprobs()
    await client.admit(load_timeout, num_seqs)
    try:
        prompt, prompt_ids = await tokenization.run(render_prompt, client, body, template_kwargs, tokenization)
        max_tokens = body.requested_max_tokens()
        if max_tokens is None:
            max_tokens = client.input_processor.defaults.get("max_tokens")
        max_tokens = check_prompt(client, prompt_ids, max_tokens, "messages")
        params = await sampling_params(body, client, max_tokens, logprobs)
    except BaseException:
        client.release(num_seqs)
        raise
    request_id = random_id("chatcmpl")
    # a grammar holds from the first token, so a prompt that opens the thinking does not make its output thinking
    in_reasoning = (client.reasoning_parser is not None and prompt_opens_reasoning(prompt)
                    and params.structured_outputs is None)
    salt = cache_salt(request, body.cache_salt)
    outputs = client.generate(request_id, prompt, prompt_ids, params, load_timeout, salt)
    if body.stream:
        return SSEResponse(_stream(body, client, request_id, prompt_ids, params.n, outputs, in_reasoning),
                           on_close=functools.partial(client.release, num_seqs))
    try:
        return await until_disconnect(request, _collect(client, request_id, prompt_ids, params.n, outputs,
                                                        in_reasoning, logprobs is not None))
    finally:
        client.release(num_seqs)


async def _collect(client, request_id, prompt_ids, n, outputs, in_reasoning, want_logprobs) -> dict:
    choices, cached = [Choice(i) for i in range(n)], 0
    async for out in outputs:
        cached = out.num_cached_tokens
        for c in out.outputs:
            choices[c.index].add(c)
    token_text = TokenText(client.tokenizer)
    result = []
    for ch in choices:
        message = {"role": "assistant", "content": ch.text}
        if client.reasoning_parser is not None:
            reasoning, content = split_reasoning(ch.text, in_reasoning)
            message["content"] = content
            if reasoning is not None:  # vLLM renamed the field `reasoning` in 2026; clients read either
                message["reasoning_content"] = message["reasoning"] = reasoning
        result.append({"index": ch.index, "message": message,
                       "logprobs": chat_logprobs(ch.logprobs, token_text) if want_logprobs else None,
                       "finish_reason": ch.finish_reason, "stop_reason": ch.stop_reason})
    return {"id": request_id, "object": "chat.completion", "created": now(), "model": client.name,
            "choices": result, "usage": usage(len(prompt_ids), sum(ch.num_tokens for ch in choices), cached)}


async def _stream(body, client, request_id, prompt_ids, n, outputs, in_reasoning):
    created, include_usage = now(), body.include_usage
    token_text = TokenText(client.tokenizer)
    parsers = [ReasoningParser(in_reasoning) if client.reasoning_parser else None for _ in range(n)]
    completion_tokens = cached = 0

    chunk = chunk_writer(request_id, "chat.completion.chunk", created, client.name, include_usage)

    try:
        for i in range(n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for out in outputs:
            cached = out.num_cached_tokens
            for c in out.outputs:
                completion_tokens += len(c.token_ids)
                delta = _delta(parsers[c.index], c.text, c.finished)
                if not delta and not c.finished and not c.logprobs:
                    continue
                yield chunk([{"index": c.index, "delta": delta,
                              "logprobs": chat_logprobs(c.logprobs, token_text) if c.logprobs is not None else None,
                              "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}])
        if include_usage:
            yield chunk([], usage=usage(len(prompt_ids), completion_tokens, cached))
    except Exception as e:
        yield sse_error(e)
    yield sse("[DONE]")


def _delta(parser: ReasoningParser | None, text: str, finished: bool) -> dict:
    if parser is None:
        return {"content": text} if text else {}
    reasoning, content = parser.feed(text)
    if finished:
        more_reasoning, more_content = parser.flush()
        reasoning, content = reasoning + more_reasoning, content + more_content
    delta = {}
    if reasoning:
        delta["reasoning_content"] = delta["reasoning"] = reasoning
    if content:
        delta["content"] = content
    return delta
