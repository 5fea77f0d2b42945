"""The Responses API's request body and input items, checked at the boundary, and the chat request they
become: the chat path renders, generates and parses it. Unknown fields are ignored, as on the other routes."""
import re
import uuid
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from corral.server.errors import BadRequestError, validation_error
from corral.server.protocol import ChatCompletionRequest, OpenAIBase, unicode_text

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
THINKING_OFF = ("none", "minimal")  # reasoning.effort that turns a thinking model's thinking off
TEXT_PARTS = ("input_text", "output_text")
ROLES = {"developer": "system"}  # chat templates know system; Qwen3's drops a developer turn
# the chat request's parameters as the Responses API names them, for errors the chat path raises
PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
          "response_format": "text.format", "chat_template_kwargs": "reasoning"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Part(OpenAIBase):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class MessageItem(OpenAIBase):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]


class FunctionCallItem(OpenAIBase):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(OpenAIBase):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[Part]


class ReasoningPart(OpenAIBase):
    type: Literal["summary_text", "reasoning_text"]
    text: str


class ReasoningItem(OpenAIBase):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningPart] = []
    content: list[ReasoningPart] | None = None


ITEMS = {"message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
         "reasoning": ReasoningItem}


class TextConfig(OpenAIBase):
    format: dict[str, Any] | None = None
    verbosity: str | None = None  # accepted, not acted on


class ReasoningConfig(OpenAIBase):
    effort: Literal[EFFORTS] | None = None
    summary: str | None = None  # accepted: the reasoning comes back whole, as reasoning_text


class ResponsesRequest(OpenAIBase):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # accepted, not acted on: hints for OpenAI's own caches, routing and extra output corral does not make
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    # refused unless off (check_unsupported)
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = None

    _text = field_validator("model", "input", "instructions", "tools", "tool_choice", "metadata", "user",
                            "previous_response_id")(unicode_text)

    def check_unsupported(self):
        """Options corral cannot honour get a 400 rather than being ignored."""
        refused = {"background": self.background, "conversation": self.conversation is not None,
                   "prompt": self.prompt is not None, "truncation": self.truncation == "auto",
                   "top_logprobs": bool(self.top_logprobs)}
        for param, given in refused.items():
            if given:
                hint = "; chain responses with previous_response_id" if param == "conversation" else ""
                raise BadRequestError(f"{param} is not supported by this server{hint}", param=param)
        if self.metadata is not None:
            if len(self.metadata) > 16:
                raise BadRequestError(f"metadata holds at most 16 pairs, got {len(self.metadata)}", param="metadata")
            for key, value in self.metadata.items():
                if len(key) > 64 or len(value) > 512:
                    raise BadRequestError(f"metadata keys are at most 64 characters and values at most 512 "
                                          f"({key[:64]!r})", param="metadata")

    def input_items(self) -> list[dict]:
        """The input as items with ids, as they are stored and listed: a string is one user message."""
        if isinstance(self.input, str):
            return [_message(new_id("msg"), "user", [self.input])]
        return [_input_item(i, item) for i, item in enumerate(self.input)]

    def chat_request(self, messages: list[dict]) -> ChatCompletionRequest:
        """The chat request this response is generated as."""
        if not messages:
            raise BadRequestError("input must hold at least one item", param="input")
        try:
            return ChatCompletionRequest(
                model=self.model, messages=messages, temperature=self.temperature, top_p=self.top_p,
                max_completion_tokens=self.max_output_tokens, user=self.user, tools=self._chat_tools(),
                tool_choice=self._chat_tool_choice(), parallel_tool_calls=self.parallel_tool_calls,
                response_format=self._response_format(), chat_template_kwargs=self._template_kwargs())
        except ValidationError as e:
            raise responses_error(validation_error(list(e.errors()))) from None

    def echoed_text(self) -> dict:
        return {"format": (self.text.format if self.text and self.text.format else {"type": "text"})}

    def _chat_tools(self) -> list[dict] | None:
        tools = []
        for i, tool in enumerate(self.tools or []):
            if tool.get("type") != "function":
                raise BadRequestError(f"tools[{i}] is a {tool.get('type')!r} tool; this server runs function "
                                      "tools only", param="tools")
            function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            tools.append({"type": "function", "function": function})
        return tools or None

    def _chat_tool_choice(self):
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            return choice
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise BadRequestError('tool_choice must be "none", "auto", "required" or {"type": "function", "name": '
                                  f'...}}; got a {choice.get("type")!r} choice', param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}

    def _response_format(self) -> dict | None:
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.get("type") == "text":
            return None
        if fmt.get("type") == "json_object":
            return {"type": "json_object"}
        if fmt.get("type") == "json_schema":
            if not isinstance(fmt.get("schema"), dict):
                raise BadRequestError("text.format json_schema needs a `schema` object", param="text.format.schema")
            return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}}
        raise BadRequestError(f"text.format type {fmt.get('type')!r} is not one of text, json_object, json_schema",
                              param="text.format.type")

    def _template_kwargs(self) -> dict | None:
        effort = self.reasoning.effort if self.reasoning else None
        return None if effort is None else {"enable_thinking": effort not in THINKING_OFF}


def responses_error(error: BadRequestError):
    """An error of the chat path, naming the Responses API's parameter instead of the chat one."""
    if error.param:
        head, dot, rest = error.param.partition(".")
        if head in PARAMS:
            error.param = PARAMS[head] if head == "messages" or not dot else f"{PARAMS[head]}.{rest}"
            # a message's index in the chat request is not its input item's (instructions, history, folded calls)
            named = r"\bmessages(?:\.\d+|\[\d+\])?" if head == "messages" else rf"\b{head}\b"
            error.message = re.sub(named, PARAMS[head], error.message, count=1)
    return error


def _input_item(i: int, raw: dict) -> dict:
    kind = raw.get("type", "message")
    model = ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadRequestError(f"input[{i}] is a {kind!r} item; this server takes {', '.join(ITEMS)} items",
                              param=f"input.{i}.type")
    try:
        item = model.model_validate(raw)
    except ValidationError as e:
        raise validation_error([{**err, "loc": ("input", i, *err["loc"])} for err in e.errors()]) from None
    if isinstance(item, MessageItem):
        return _message(item.id or new_id("msg"), item.role, _texts(item.content, f"input.{i}.content"))
    if isinstance(item, FunctionCallItem):
        return {"id": item.id or new_id("fc"), "type": "function_call", "status": "completed",
                "call_id": item.call_id, "name": item.name, "arguments": item.arguments}
    if isinstance(item, FunctionCallOutputItem):
        output = item.output if isinstance(item.output, str) else "\n".join(_texts(item.output, f"input.{i}.output"))
        return {"id": item.id or new_id("fco"), "type": "function_call_output", "status": "completed",
                "call_id": item.call_id, "output": output}
    reasoning = {"id": item.id or new_id("rs"), "type": "reasoning",
                 "summary": [{"type": "summary_text", "text": p.text} for p in item.summary]}
    if item.content is not None:
        reasoning["content"] = [{"type": "reasoning_text", "text": p.text} for p in item.content]
    return reasoning


def _texts(content: str | list[Part], param: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PARTS:
            raise BadRequestError(f"{param}[{j}] is a {part.type!r} part; this server takes text parts "
                                  f"({', '.join(TEXT_PARTS)})", param=f"{param}.{j}")
        if part.text is None:
            raise BadRequestError(f"{param}[{j}] is a {part.type!r} part without its text", param=f"{param}.{j}.text")
        texts.append(part.text)
    return texts


def _message(item_id: str, role: str, texts: list[str]) -> dict:
    kind = "output_text" if role == "assistant" else "input_text"
    parts = [{"type": kind, "text": t, **({"annotations": []} if role == "assistant" else {})} for t in texts]
    return {"id": item_id, "type": "message", "role": role, "status": "completed", "content": parts}
