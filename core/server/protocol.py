"""Request bodies of the OpenAI API (and vLLM's common extras), validated strictly at the boundary.

Fields left unset (None) fall back to the model's defaults: its generation_config.json, then the
server config's `sampling` section, then SamplingParams' own. Unknown fields are ignored, as vLLM does.
"""
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.sampling_params import SamplingParams, SamplingParamsError, StructuredOutputsParams
from corral.server.errors import BadRequestError, validation_error
from corral.server.tool_calling import ToolPlan, template_arguments

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "seed", "min_tokens", "ignore_eos", "skip_special_tokens",
                   "include_stop_str_in_output")


def unicode_text(value):
    """`value` (a string, or strings nested in lists and dicts) if it is Unicode text; JSON can also carry
    lone UTF-16 surrogates ("\\ud800"), which no tokenizer can encode and no response can echo."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"lone UTF-16 surrogate {value[e.start]!r} at character {e.start}; "
                                 "text must be valid Unicode") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            unicode_text(k), unicode_text(v)
    elif isinstance(value, list):
        for v in value:
            if v.__class__ is not int:  # token ids: a prompt's thousands of them need no look
                unicode_text(v)
    elif isinstance(value, BaseModel):
        unicode_text(value.model_dump())
    return value


def token_ids_as_sent(value, handler):
    """A prompt of token ids (a list of ints and nothing else) as it came, which is what the union's
    `list[int]` would give; anything else through the union. The union in smart mode tries its members in
    turn on each of a prompt's thousands of ids: 90-130 us a request, against 20 us here."""
    if value.__class__ is list and value and set(map(type, value)) == {int}:
        return value
    return handler(value)


def prompt_list(value: str | list[str] | list[int] | list[list[int]], param: str) -> list[str | list[int]]:
    """A text, texts, token ids or lists of token ids as a list of prompts; 400 naming `param` when empty."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    if not value:
        raise BadRequestError(f"{param} must not be empty", param=param)
    return list(value)


class OpenAIBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(OpenAIBase):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class SamplingFields(OpenAIBase):
    """What chat and completions requests share."""

    model: str | None = None
    n: int | None = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    cache_salt: str | None = Field(default=None, min_length=1)  # only requests with the same salt share cached blocks
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    _text = field_validator("model", "stop", "cache_salt")(unicode_text)

    def sampling_params(self, defaults: dict, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """SamplingParams from this request over the model's defaults; SamplingParamsError names a bad one."""
        values = dict(defaults)
        values.update({k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k) is not None})
        return SamplingParams(n=self.n if self.n is not None else 1, max_tokens=max_tokens, logprobs=logprobs,
                              stop=self.stop or [], stop_token_ids=self.stop_token_ids or [],
                              logit_bias=self.parsed_logit_bias(), structured_outputs=self.structured_output(),
                              **values)

    def structured_output_field(self) -> str:
        """The field that says what the output must match (for an error's `param`)."""
        return next((name for name in STRUCTURED_FIELDS if getattr(self, name) is not None), "response_format")

    def structured_output(self) -> StructuredOutputsParams | None:
        """What the output must match, from whichever one of OpenAI's response_format, vLLM's
        structured_outputs or its older guided_* fields the request uses."""
        given = {name: getattr(self, name) for name in STRUCTURED_FIELDS if getattr(self, name) is not None}
        if (self.response_format or {}).get("type", "text") == "text":
            given.pop("response_format", None)
        if len(given) > 1:
            raise BadRequestError(f"give one of {', '.join(STRUCTURED_FIELDS)}; got {', '.join(given)}",
                                  param=list(given)[1])
        if not given:
            return None
        (name, value), = given.items()
        try:
            if name == "response_format":
                return _response_format(value)
            if name == "structured_outputs":
                known = {"json", "regex", "choice", "grammar", "json_object"}
                return StructuredOutputsParams(**{k: v for k, v in value.items() if k in known})
            kind = name.removeprefix("guided_")
            return StructuredOutputsParams(**{kind: value})
        except SamplingParamsError as e:
            raise BadRequestError(str(e), param=name) from None
        except TypeError as e:
            raise BadRequestError(f"{name}: {e}", param=name) from None

    def parsed_logit_bias(self) -> dict[int, float]:
        bias = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                bias[int(key)] = value
            except ValueError:
                raise BadRequestError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        return bias

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise BadRequestError("stream_options is only allowed when stream is true", param="stream_options")

    def check_unsupported(self):
        """Options corral cannot honour get a 400 rather than being ignored."""


STRUCTURED_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar")


def _response_format(value: dict) -> StructuredOutputsParams:
    kind = value.get("type")
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise BadRequestError("response_format.json_schema must be an object with a `schema` object",
                                  param="response_format")
        return StructuredOutputsParams(json=spec.get("schema") or {"type": "object"})
    raise BadRequestError(f"response_format type {kind!r} is not one of text, json_object, json_schema",
                          param="response_format")


class ContentPart(OpenAIBase):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class ToolCallFunction(OpenAIBase):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str
    arguments: str | dict[str, Any] | None = None  # JSON text (OpenAI), an object (Ollama)


class ToolCallParam(OpenAIBase):
    """A call in an assistant turn the client sends back."""

    model_config = ConfigDict(strict=True, extra="allow")
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class ChatMessage(OpenAIBase):
    model_config = ConfigDict(strict=True, extra="allow")  # name, ... reach the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # vLLM's newer name for reasoning_content
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None

    _text = field_validator("content", "reasoning_content", "reasoning", "tool_calls", "tool_call_id")(unicode_text)

    @model_validator(mode="after")
    def _extra_text(self):
        unicode_text(self.model_extra)  # name and other extra fields reach the template too
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    # vLLM extras
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None
    add_generation_prompt: bool | None = True
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's legacy function calling: refused, so that it is not silently ignored
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None

    _template_text = field_validator("chat_template_kwargs", "chat_template", "tools", "tool_choice")(unicode_text)

    def tool_plan(self) -> ToolPlan | None:
        """The request's tools checked (400 naming tools or tool_choice), or None without tools."""
        return ToolPlan.from_request(self.tools, self.tool_choice, self.parallel_tool_calls)

    def structured_output(self) -> StructuredOutputsParams | None:
        """tool_choice required or a named function is held by a JSON schema of the call(s)."""
        plan = self.tool_plan()
        schema = plan.schema() if plan is not None else None
        if schema is None:
            return super().structured_output()
        if super().structured_output() is not None:
            what = "required" if plan.choice == "required" else f"naming {plan.function}"
            raise BadRequestError(f"tool_choice {what} cannot be combined with {super().structured_output_field()} "
                                  "(the calls' own schema holds the output)", param="tool_choice")
        return StructuredOutputsParams(json=schema)

    def structured_output_field(self) -> str:
        plan = self.tool_plan()
        return "tools" if plan is not None and plan.schema() is not None else super().structured_output_field()

    def template_kwargs(self, trusted: bool) -> dict:
        """chat_template_kwargs, with the request's own chat_template only where the server trusts it (a
        template is a program the server runs)."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        if "chat_template" in kwargs and not trusted:
            param = "chat_template" if self.chat_template is not None else "chat_template_kwargs"
            raise BadRequestError("this server does not render chat templates that requests bring; its operator "
                                  "can allow them with --trust-request-chat-template", param=param)
        return kwargs

    def check_unsupported(self):
        super().check_unsupported()
        if self.functions or self.function_call not in (None, "none"):
            raise BadRequestError("functions and function_call (deprecated by OpenAI) are not supported; use "
                                  "tools and tool_choice", param="functions")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequestError("top_logprobs needs logprobs set to true", param="top_logprobs")
        if not self.logprobs:
            return None
        top = self.top_logprobs or 0
        if not 0 <= top <= SamplingParams.MAX_LOGPROBS:
            raise BadRequestError(f"top_logprobs must be in [0, {SamplingParams.MAX_LOGPROBS}], got {top}",
                                  param="top_logprobs")
        return top

    def message_dicts(self) -> list[dict]:
        """Messages as the chat template expects them: text parts joined into one string, tool-call
        arguments as objects."""
        out = []
        for i, message in enumerate(self.messages):
            m = message.model_dump(exclude_none=True)
            if isinstance(message.content, list):
                texts = []
                for j, part in enumerate(message.content):
                    if part.type != "text":
                        raise BadRequestError(f"messages[{i}].content: only text parts are supported, got a "
                                              f"{part.type!r} part", param=f"messages.{i}.content")
                    if part.text is None:
                        raise BadRequestError(f"messages[{i}].content[{j}]: a text part needs its text",
                                              param=f"messages.{i}.content.{j}.text")
                    texts.append(part.text)
                m["content"] = "\n".join(texts)
            elif message.content is None:
                m["content"] = ""
            if "reasoning" in m:  # templates (Qwen3's) read reasoning_content
                m.setdefault("reasoning_content", m.pop("reasoning"))
            out.append(m)
        return template_arguments(out)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = None  # OpenAI's default is 16
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None

    _text = field_validator("prompt")(unicode_text)
    _token_ids = field_validator("prompt", mode="wrap")(token_ids_as_sent)  # outside _text: ids need no look

    def prompts(self) -> list[str | list[int]]:
        return prompt_list(self.prompt, "prompt")

    def check(self):
        if self.suffix:
            raise BadRequestError("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise BadRequestError("best_of must equal n (beam search and best-of are not supported)", param="best_of")
        if self.logprobs is not None and not 0 <= self.logprobs <= SamplingParams.MAX_LOGPROBS:
            raise BadRequestError(f"logprobs must be in [0, {SamplingParams.MAX_LOGPROBS}], got {self.logprobs}",
                                  param="logprobs")


class TokenizeRequest(OpenAIBase):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = True
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    return_token_strs: bool | None = False

    _text = field_validator("model", "prompt", "chat_template_kwargs", "chat_template")(unicode_text)

    def chat(self) -> ChatCompletionRequest | None:
        if (self.prompt is None) == (self.messages is None):
            raise BadRequestError("give exactly one of prompt and messages", param="prompt")
        if self.messages is None:
            return None
        try:
            return ChatCompletionRequest(model=self.model, messages=self.messages,
                                         chat_template_kwargs=self.chat_template_kwargs,
                                         chat_template=self.chat_template,
                                         add_generation_prompt=self.add_generation_prompt, tools=self.tools,
                                         tool_choice=self.tool_choice)
        except ValidationError as e:  # the chat request's own checks, as on /v1/chat/completions
            raise validation_error(list(e.errors())) from None


class DetokenizeRequest(OpenAIBase):
    model: str | None = None
    tokens: list[int]


class EmbeddingRequest(OpenAIBase):
    """POST /v1/embeddings: text, texts, token ids or lists of token ids; one vector each."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    _text = field_validator("model", "input")(unicode_text)
    _token_ids = field_validator("input", mode="wrap")(token_ids_as_sent)

    def inputs(self) -> list[str | list[int]]:
        return prompt_list(self.input, "input")
