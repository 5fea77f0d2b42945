"""Anthropic Messages requests (POST /v1/messages and /v1/messages/count_tokens) as pydantic models.

Fields corral does not act on (cache_control on blocks, metadata, service_tier, ...) are accepted and
ignored, as Claude Code and the anthropic SDK send them."""
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.server.protocol import unicode_text


class AnthropicBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextBlock(AnthropicBase):
    type: Literal["text"]
    text: str


class ImageBlock(AnthropicBase):
    type: Literal["image"]
    source: dict[str, Any]


class DocumentBlock(AnthropicBase):
    type: Literal["document"]
    source: dict[str, Any]


class ToolUseBlock(AnthropicBase):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(AnthropicBase):
    type: Literal["tool_result"]
    tool_use_id: str
    content: list[Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]] | str = ""
    is_error: bool | None = None


class ThinkingBlock(AnthropicBase):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(AnthropicBase):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
                         | RedactedThinkingBlock, Field(discriminator="type")]


class MessageParam(AnthropicBase):
    role: Literal["user", "assistant"]
    content: list[ContentBlock] | str  # the list first: its errors name the block


class Tool(AnthropicBase):
    """A client tool; Anthropic's server tools (web search, code execution, ...) carry another `type`."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: str | None = None


class ToolChoice(AnthropicBase):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(AnthropicBase):
    type: Literal["enabled", "adaptive", "between_tools", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1)  # accepted; the thinking is not cut at it


class OutputFormat(AnthropicBase):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(AnthropicBase):
    format: OutputFormat | None = None
    effort: str | None = None  # accepted; a local model has one effort


class CountTokensRequest(AnthropicBase):
    """What makes the prompt: what count_tokens counts and every Messages request has."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: list[TextBlock] | str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    _text = field_validator("model", "messages", "system", "tools")(unicode_text)


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)  # Anthropic's range, not OpenAI's [0, 2]
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None
    stream: bool | None = False
    output_config: OutputConfig | None = None

    _stop_text = field_validator("stop_sequences")(unicode_text)
