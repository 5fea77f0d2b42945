"""Request bodies of Ollama's API, and the OpenAI-shaped requests they become: corral serves Ollama's chat
through the one chat path, its options as the sampling fields every dialect shares."""
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.config import ConfigError
from corral.server.config import parse_duration
from corral.server.errors import APIError, BadRequestError, validation_error
from corral.server.protocol import ChatCompletionRequest, SamplingFields, unicode_text

# the OpenAI / vLLM sampling fields that Ollama's options of the same name are
SAME_NAME = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty")


class NotSupportedError(APIError):
    status_code = 501
    type = "not_supported"


class OllamaBase(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Ollama's clients send fields of every version


class Options(OllamaBase):
    """Ollama's `options`: the sampling ones mapped; the runner's own (num_gpu, num_thread, mirostat, ...)
    have no meaning here and are ignored, as Ollama's newer engine ignores several of them."""

    num_predict: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: int | None = Field(default=None, ge=1)

    _text = field_validator("stop")(unicode_text)

    @property
    def max_tokens(self) -> int | None:
        """num_predict; -1 (until the model stops) and -2 (until the context is full) set no limit."""
        return self.num_predict if self.num_predict is not None and self.num_predict > 0 else None

    def sampling_fields(self) -> dict:
        fields = {k: getattr(self, k) for k in SAME_NAME if getattr(self, k) is not None}
        if self.repeat_penalty is not None:
            fields["repetition_penalty"] = self.repeat_penalty
        if self.stop:
            fields["stop"] = self.stop
        return fields


def response_format(value) -> dict | None:
    """Ollama's `format` as OpenAI's response_format: "json" is JSON mode (a JSON object), an object a JSON schema."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise BadRequestError(f'format must be "json" or a JSON schema (an object), got {value!r}', param="format")


def keep_alive_seconds(value, default: float | None) -> float | None:
    """Seconds a model stays loaded after this request (None: until the server stops); `default` when unset."""
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ConfigError as e:
        raise BadRequestError(str(e), param="keep_alive") from None


class Generating(OllamaBase):
    """What chat and generate share."""

    model: str = Field(min_length=1)
    format: str | dict[str, Any] | None = None
    options: Options = Field(default_factory=Options)
    stream: bool = True
    keep_alive: float | str | None = None
    think: bool | Literal["high", "medium", "low"] | None = None

    def template_kwargs(self) -> dict:
        """think as Qwen3's chat template reads it (enable_thinking); its levels all think (Qwen3 has none)."""
        return {} if self.think is None else {"enable_thinking": self.think is not False}

    def sampling_fields(self) -> dict:
        fields = self.options.sampling_fields()
        if (fmt := response_format(self.format)) is not None:
            fields["response_format"] = fmt
        return fields


class Message(OllamaBase):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None

    def openai(self) -> dict:
        """The message as the chat path takes it: tool calls with ids, the tool's name on its result."""
        message = {"role": self.role, "content": self.content}
        if self.thinking:
            message["reasoning_content"] = self.thinking
        if self.tool_calls:
            message["tool_calls"] = [{"id": call.get("id") or f"call_{i}", "type": "function",
                                      "function": call.get("function") or {}} for i, call in enumerate(self.tool_calls)]
        if self.tool_name:
            message["name"] = self.tool_name
        return message


class ChatRequest(Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def check_unsupported(self):
        for i, message in enumerate(self.messages):
            if message.images:
                raise BadRequestError(f"messages[{i}].images: corral serves text models; images are not supported",
                                      param=f"messages.{i}.images")

    def openai(self) -> ChatCompletionRequest:
        return _validated(ChatCompletionRequest, {
            "model": self.model, "messages": [m.openai() for m in self.messages], "tools": self.tools,
            "max_tokens": self.options.max_tokens, "chat_template_kwargs": self.template_kwargs(),
            **self.sampling_fields()})


class GenerateRequest(Generating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[Any] | None = None

    _text = field_validator("prompt", "system", "template")(unicode_text)

    def check_unsupported(self):
        if self.images:
            raise BadRequestError("images: corral serves text models; images are not supported", param="images")
        if self.suffix:
            raise BadRequestError("suffix (fill in the middle) is not supported", param="suffix")

    def messages(self) -> ChatCompletionRequest:
        """The prompt (and system) as one chat turn, for the model's chat template."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return _validated(ChatCompletionRequest, {"model": self.model,
                                                  "messages": [*system, {"role": "user", "content": self.prompt}]})

    def sampling(self) -> SamplingFields:
        return _validated(SamplingFields, {"model": self.model, **self.sampling_fields()})


class ModelRequest(OllamaBase):
    """show, pull and delete name a model as `model` (or `name`, as Ollama's older clients do)."""

    model: str | None = None
    name: str | None = None
    stream: bool = True
    insecure: bool | None = None

    @property
    def target(self) -> str:
        name = self.model or self.name
        if not name:
            raise BadRequestError("model is required", param="model")
        return name


class EmbedRequest(OllamaBase):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: Options = Field(default_factory=Options)
    keep_alive: float | str | None = None

    _text = field_validator("input")(unicode_text)


class EmbeddingsRequest(OllamaBase):
    """The older /api/embeddings: one prompt, one vector."""

    model: str = Field(min_length=1)
    prompt: str
    options: Options = Field(default_factory=Options)
    keep_alive: float | str | None = None

    _text = field_validator("prompt")(unicode_text)


def _validated(cls, data: dict):
    """`cls` built from `data`; a 400 naming the field when the chat path's own checks refuse it."""
    try:
        return cls.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as e:
        raise validation_error(list(e.errors())) from None
