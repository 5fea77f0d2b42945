"""POST /v1/chat/completions: chat template, generation, reasoning split, tool calls, JSON or SSE chunks."""
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request as HTTPRequest

from corral.engine.tokenizer import ChatTemplateError
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.server.auth import cache_salt
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError
from corral.server.limits import Tokenization
from corral.server.protocol import ChatCompletionRequest
from corral.server.reasoning import ReasoningParser, prompt_opens_reasoning, split_reasoning
from corral.server.serving import (Choice, SSEResponse, TokenText, arrival_time, chat_logprobs, check_num_sequences,
                                   check_prompt, chunk_writer, end_request, now, random_id, sampling_params, sse,
                                   sse_error, until_disconnect, usage)
from corral.server.tool_calling import generic_messages, is_generic, output_parser


def render_prompt(client: EngineClient, body: ChatCompletionRequest, template_kwargs: dict,
                  tokenization: Tokenization) -> tuple[str, list[int], bool]:
    """The prompt, its token ids, and whether tools took the generic way (corral.server.tool_calling)."""
    plan, messages = body.tool_plan(), body.message_dicts()
    tool_turns = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    generic = (plan is not None or tool_turns) and is_generic(client, template_kwargs)
    if generic:
        messages = generic_messages(messages, plan)
    try:
        prompt = client.input_processor.render_chat(messages, body.add_generation_prompt is not False,
                                                    template_kwargs, plan.tools if plan and not generic else None)
    except ChatTemplateError as e:
        param = "chat_template" if "chat_template" in template_kwargs else "messages"
        raise BadRequestError(str(e), param=param) from None
    return prompt, tokenization.encode(client, prompt, "messages", add_special_tokens=False), generic


@dataclass(slots=True)
class ChatGeneration:
    """A chat request admitted, rendered and started: its delta outputs and what reads them. Every dialect
    that speaks in turns (chat completions, Responses, ...) goes through here; `release` gives back its
    admission once the outputs are read."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    outputs: AsyncIterator[RequestOutput]
    in_reasoning: bool               # the prompt left the model inside its thinking
    tool_parser: Callable[[], object]  # a new tool-call parser per choice (None without calls to read)
    release: Callable[[], None]


async def start_chat(body: ChatCompletionRequest, client: EngineClient, request: HTTPRequest, load_timeout: float,
                     request_id: str) -> ChatGeneration:
    body.check_stream_options()
    body.check_unsupported()
    plan = body.tool_plan()
    config, tokenization = request.app.state.config, request.app.state.tokenization
    template_kwargs = body.template_kwargs(config.trust_request_chat_template)
    num_seqs = check_num_sequences(client, body.n)
    logprobs = body.requested_logprobs()
    await client.admit(load_timeout, num_seqs)
    try:
        prompt, prompt_ids, generic = await tokenization.run(render_prompt, client, body, template_kwargs,
                                                             tokenization)
        max_tokens = body.requested_max_tokens()
        if max_tokens is None:
            max_tokens = client.input_processor.defaults.get("max_tokens")
        max_tokens = check_prompt(client, prompt_ids, max_tokens, "messages")
        params = await sampling_params(body, client, max_tokens, logprobs)
        salt = cache_salt(request, body.cache_salt)
        outputs = client.generate(request_id, prompt, prompt_ids, params, load_timeout, salt, arrival_time(request))
    except BaseException:
        client.release(num_seqs)
        raise
    # a grammar holds from the first token, so a prompt that opens the thinking does not make its output thinking
    in_reasoning = (client.reasoning_parser is not None and prompt_opens_reasoning(prompt)
                    and params.structured_outputs is None)
    return ChatGeneration(request_id, prompt_ids, params, outputs, in_reasoning,
                          functools.partial(output_parser, plan, client, generic),
                          functools.partial(end_request, client, [outputs], num_seqs))


async def create_chat_completion(body: ChatCompletionRequest, client: EngineClient, request: HTTPRequest,
                                 load_timeout: float):
    generation = await start_chat(body, client, request, load_timeout, random_id("chatcmpl"))
    if body.stream:
        return SSEResponse(_stream(body, client, generation), on_close=generation.release)
    try:
        return await until_disconnect(request, collect_chat(client, generation))
    finally:
        generation.release()


async def collect_chat(client: EngineClient, generation: ChatGeneration) -> dict:
    """The whole chat.completion object of a generation."""
    g = generation
    choices, cached = [Choice(i) for i in range(g.params.n)], 0
    async for out in g.outputs:
        cached = out.num_cached_tokens
        for c in out.outputs:
            choices[c.index].add(c)
    token_text = TokenText(client.tokenizer)
    result = []
    for ch in choices:
        message, finish_reason = {"role": "assistant", "content": ch.text}, ch.finish_reason
        if client.reasoning_parser is not None:
            reasoning, content = split_reasoning(ch.text, g.in_reasoning)
            message["content"] = content
            if reasoning is not None:  # vLLM renamed the field `reasoning` in 2026; clients read either
                message["reasoning_content"] = message["reasoning"] = reasoning
        if (parser := g.tool_parser()) is not None:
            parsed = parser.parse(message["content"] or "")
            if parsed.tool_calls:  # content is None when there are only calls
                message["content"], message["tool_calls"] = parsed.content, [c.to_openai() for c in parsed.tool_calls]
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        result.append({"index": ch.index, "message": message,
                       "logprobs": chat_logprobs(ch.logprobs, token_text) if g.params.logprobs is not None else None,
                       "finish_reason": finish_reason, "stop_reason": ch.stop_reason})
    return {"id": g.request_id, "object": "chat.completion", "created": now(), "model": client.name,
            "choices": result, "usage": usage(len(g.prompt_ids), sum(ch.num_tokens for ch in choices), cached)}


async def _stream(body, client, generation: ChatGeneration):
    g, n = generation, generation.params.n
    created, include_usage = now(), body.include_usage
    token_text = TokenText(client.tokenizer)
    parsers = [ReasoningParser(g.in_reasoning) if client.reasoning_parser else None for _ in range(n)]
    tool_parsers, called = [g.tool_parser() for _ in range(n)], [False] * n
    completion_tokens = cached = 0

    chunk = chunk_writer(g.request_id, "chat.completion.chunk", created, client.name, include_usage)
    ending = ""  # the last output's chunks go with the usage and [DONE] in one write

    try:
        for i in range(n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for out in g.outputs:
            cached = out.num_cached_tokens
            for c in out.outputs:
                completion_tokens += len(c.token_ids)
                deltas = chat_deltas(parsers[c.index], tool_parsers[c.index], c.text, c.finished)
                if not deltas and not c.finished and not c.logprobs:
                    continue
                called[c.index] = called[c.index] or any("tool_calls" in d for d in deltas)
                finish_reason = c.finish_reason
                if called[c.index] and finish_reason == "stop":
                    finish_reason = "tool_calls"
                deltas = deltas or [{}]
                for k, delta in enumerate(deltas):  # the logprobs go with the first, the end with the last
                    last = k == len(deltas) - 1
                    piece = chunk([{"index": c.index, "delta": delta,
                                    "logprobs": chat_logprobs(c.logprobs, token_text) if c.logprobs is not None
                                    and k == 0 else None,
                                    "finish_reason": finish_reason if last else None,
                                    "stop_reason": c.stop_reason if last else None}])
                    if out.finished:
                        ending += piece
                    else:
                        yield piece
        if include_usage:
            ending += chunk([], usage=usage(len(g.prompt_ids), completion_tokens, cached))
    except Exception as e:
        ending += sse_error(e)
    yield ending + sse("[DONE]")


def chat_deltas(parser: ReasoningParser | None, tool_parser, text: str, finished: bool) -> list[dict]:
    """The chunk deltas of one piece of a choice's output: reasoning, then content or tool-call pieces."""
    delta = _delta(parser, text, finished)
    if tool_parser is None:
        return [delta] if delta else []
    content = delta.pop("content", "")
    messages = tool_parser.feed(content) if content else []
    if finished:
        messages += tool_parser.finish()
    return ([delta] if delta else []) + [m.to_openai() for m in messages]


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
