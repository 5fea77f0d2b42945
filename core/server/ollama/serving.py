"""POST /api/chat and /api/generate: chat goes through the one chat path (start_chat), generate's own prompt
(the model's template, Ollama's `template`, or `raw`) through the same checks and engine; both answer in
Ollama's words, as NDJSON lines (the default) or one JSON object."""
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from corral.server.auth import cache_salt
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError
from corral.server.ollama.protocol import ChatRequest, GenerateRequest, Generating, keep_alive_seconds
from corral.server.ollama.template import render_template
from corral.server.reasoning import ReasoningParser, prompt_opens_reasoning
from corral.server.serving import (SSEResponse, arrival_time, check_prompt, end_request, random_id, sampling_params,
                                   stream_error, until_disconnect)
from corral.server.serving_chat import ChatGeneration, chat_deltas, render_prompt, start_chat

logger = logging.getLogger(__name__)


def created_at() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def line(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


class NDJSONResponse(SSEResponse):
    """Ollama's stream: one JSON object a line."""

    def __init__(self, content, on_close):
        super().__init__(content, on_close)
        self.media_type = self.headers["content-type"] = "application/x-ndjson"


@dataclass(slots=True)
class Piece:
    """What one step of a generation adds, in Ollama's terms; tool calls come whole, with the last piece."""

    thinking: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    done_reason: str | None = None

    def add(self, other: "Piece"):
        self.thinking += other.thinking
        self.content += other.content
        self.tool_calls += other.tool_calls
        self.done_reason = other.done_reason or self.done_reason


class Reply:
    """Reads a generation into Pieces (the reasoning split and tool-call parsing of the chat path), counting
    its tokens and timing it as Ollama's done line reports."""

    def __init__(self, generation: ChatGeneration, client: EngineClient, started: int, ready: int,
                 keep_thinking: bool):
        self.generation, self.client, self.keep_thinking = generation, client, keep_thinking
        self.started, self.ready, self.first_token = started, ready, 0
        self.token_ids: list[int] = []

    async def pieces(self):
        g = self.generation
        reasoning = ReasoningParser(g.in_reasoning) if self.client.reasoning_parser else None
        tool_parser, calls = g.tool_parser(), {}
        async for out in g.outputs:
            for c in out.outputs:
                if c.token_ids and not self.first_token:
                    self.first_token = time.perf_counter_ns()
                self.token_ids += c.token_ids
                piece = Piece(done_reason=c.finish_reason)
                for delta in chat_deltas(reasoning, tool_parser, c.text, c.finished):
                    if self.keep_thinking:
                        piece.thinking += delta.get("reasoning") or ""
                    piece.content += delta.get("content") or ""
                    for call in delta.get("tool_calls", ()):
                        name, arguments = calls.get(call["index"], ("", ""))
                        calls[call["index"]] = (call["function"].get("name") or name,
                                                arguments + call["function"].get("arguments", ""))
                if c.finished:
                    for name, arguments in calls.values():
                        if (parsed := _object(arguments)) is None:  # cut off by num_predict: left as text
                            piece.content += arguments
                        else:
                            piece.tool_calls.append({"function": {"name": name, "arguments": parsed}})
                yield piece

    def stats(self) -> dict:
        end = time.perf_counter_ns()
        first = self.first_token or end
        return {"total_duration": end - self.started, "load_duration": self.ready - self.started,
                "prompt_eval_count": len(self.generation.prompt_ids), "prompt_eval_duration": first - self.ready,
                "eval_count": len(self.token_ids), "eval_duration": end - first}


def _object(arguments: str) -> dict | None:
    """A call's arguments as the object Ollama sends (the parsers give JSON text); None if they are not one."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def chat_fields(piece: Piece) -> dict:
    message = {"role": "assistant", "content": piece.content}
    if piece.thinking:
        message["thinking"] = piece.thinking
    if piece.tool_calls:
        message["tool_calls"] = piece.tool_calls
    return {"message": message}


def generate_fields(piece: Piece) -> dict:
    return {"response": piece.content, **({"thinking": piece.thinking} if piece.thinking else {})}


async def respond(request: HTTPRequest, reply: Reply, model: str, stream: bool, fields, done_extra=dict):
    """NDJSON lines, each {model, created_at, **fields(piece), done: false}, then the done line with the
    statistics; or all of it as one object. `fields` is chat_fields or generate_fields."""
    def done(piece: Piece) -> dict:
        return {"model": model, "created_at": created_at(), **fields(piece), "done": True,
                "done_reason": piece.done_reason or "stop", **reply.stats(), **done_extra()}

    async def lines():
        last, ending = Piece(), ""  # the last piece's line goes with the done line in one write
        try:
            async for piece in reply.pieces():
                last.done_reason = piece.done_reason or last.done_reason
                if piece.thinking or piece.content or piece.tool_calls:
                    text = line({"model": model, "created_at": created_at(), **fields(piece), "done": False})
                    if piece.done_reason:
                        ending += text
                    else:
                        yield text
            ending += line(done(Piece(done_reason=last.done_reason)))
        except Exception as e:
            ending += line({"error": stream_error(e).message})
        yield ending

    async def whole() -> dict:
        total = Piece()
        async for piece in reply.pieces():
            total.add(piece)
        return done(total)

    if stream:
        return NDJSONResponse(lines(), on_close=reply.generation.release)
    try:
        result = await until_disconnect(request, whole())
    finally:
        reply.generation.release()
    return result if isinstance(result, Response) else JSONResponse(result)


async def chat(body: ChatRequest, client: EngineClient, request: HTTPRequest) -> Response:
    started = time.perf_counter_ns()
    keep_alive = _keep_alive(request, client, body)
    if not body.messages:  # Ollama's way to load a model, or with keep_alive 0 to unload it
        return await load_or_unload(client, body.model, keep_alive, request, chat_fields(Piece()))
    body.check_unsupported()
    openai = body.openai()
    timeout = request.app.state.config.request_load_timeout
    await client.wait_ready(timeout)
    ready = time.perf_counter_ns()
    check_options(client, body)
    generation = await start_chat(openai, client, request, timeout, random_id("ollama-chat"))
    reply = Reply(generation, client, started, ready, keep_thinking=body.think is not False)
    return await respond(request, reply, body.model, body.stream, chat_fields)


async def generate(body: GenerateRequest, client: EngineClient, request: HTTPRequest) -> Response:
    started = time.perf_counter_ns()
    keep_alive = _keep_alive(request, client, body)
    if not body.prompt and not body.context:
        return await load_or_unload(client, body.model, keep_alive, request, {"response": ""})
    body.check_unsupported()
    timeout = request.app.state.config.request_load_timeout
    await client.wait_ready(timeout)
    ready = time.perf_counter_ns()
    check_options(client, body)
    generation = await start_generate(body, client, request, timeout)
    reply = Reply(generation, client, started, ready, keep_thinking=body.think is not False)
    return await respond(request, reply, body.model, body.stream, generate_fields,
                         lambda: {"context": generation.prompt_ids + reply.token_ids})


async def start_generate(body: GenerateRequest, client: EngineClient, request: HTTPRequest,
                         timeout: float) -> ChatGeneration:
    """Admitted and started, as start_chat does for a chat: the prompt after `context`'s tokens."""
    fields, tokenization = body.sampling(), request.app.state.tokenization
    await client.admit(timeout)
    try:
        prompt, prompt_ids = await tokenization.run(_prompt, client, body, tokenization)
        prompt_ids = list(body.context or ()) + prompt_ids
        max_tokens = body.options.max_tokens
        if max_tokens is None:
            max_tokens = client.input_processor.defaults.get("max_tokens")
        max_tokens = check_prompt(client, prompt_ids, max_tokens, "prompt")
        params = await sampling_params(fields, client, max_tokens, None)
        request_id = random_id("ollama-generate")
        outputs = client.generate(request_id, prompt, prompt_ids, params, timeout, cache_salt(request, None),
                                  arrival_time(request))
    except BaseException:
        client.release()
        raise
    in_reasoning = (client.reasoning_parser is not None and prompt_opens_reasoning(prompt)
                    and params.structured_outputs is None)
    return ChatGeneration(request_id, prompt_ids, params, outputs, in_reasoning, lambda: None,
                          functools.partial(end_request, client, [outputs], 1))


def _prompt(client: EngineClient, body: GenerateRequest, tokenization) -> tuple[str, list[int]]:
    """raw: the prompt as it is; `template`: Ollama's template rendered; else the model's chat template."""
    if body.raw or body.template is not None:
        text = body.prompt if body.raw else render_template(body.template, {"System": body.system or "",
                                                                             "Prompt": body.prompt})
        return text, tokenization.encode(client, text, "prompt", add_special_tokens=not body.context)
    text, ids, _ = render_prompt(client, body.messages(), body.template_kwargs(), tokenization)
    return text, ids


def check_options(client: EngineClient, body: Generating):
    if body.think not in (None, False) and client.reasoning_parser is None:
        raise BadRequestError(f'"{body.model}" does not support thinking', param="think")
    num_ctx, limit = body.options.num_ctx, client.max_model_len
    if num_ctx is not None and limit is not None and num_ctx > limit:
        logger.warning("%s: num_ctx %d asked; serving its context length %d (corral serve --max-model-len)",
                       client.name, num_ctx, limit)


def _keep_alive(request: HTTPRequest, client: EngineClient, body: Generating) -> float | None:
    seconds = keep_alive_seconds(body.keep_alive, client.spec.keep_alive)
    request.app.state.registry.set_keep_alive(client, seconds)
    return seconds


async def load_or_unload(client: EngineClient, model: str, keep_alive: float | None, request: HTTPRequest,
                         empty: dict) -> JSONResponse:
    """An empty request: load the model, or unload it when keep_alive is 0 (once its requests end)."""
    if keep_alive == 0:
        await client.unload()
        reason = "unload"
    else:
        await client.wait_ready(request.app.state.config.request_load_timeout)
        reason = "load"
    return JSONResponse({"model": model, "created_at": created_at(), **empty, "done": True, "done_reason": reason})
