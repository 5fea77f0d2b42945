"""An Anthropic Messages request as the chat completions request the chat machinery serves: system and
turns as chat messages, tool_use blocks as an assistant's tool_calls, tool_result blocks as tool turns,
thinking blocks as the assistant's reasoning, tools and tool_choice as OpenAI's (`any` is `required`,
held by a grammar as a named tool is), `thinking` as the chat template's enable_thinking (off when
absent, Anthropic's default), output_config's JSON schema as a json_schema response_format."""
import json

from pydantic import ValidationError

from corral.server.anthropic.protocol import CountTokensRequest, MessagesRequest, MessageParam, TextBlock
from corral.server.errors import BadRequestError, validation_error
from corral.server.protocol import ChatCompletionRequest

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def chat_request(body: CountTokensRequest) -> ChatCompletionRequest:
    fields = {"model": body.model, "messages": chat_messages(body), **tool_fields(body)}
    # Anthropic's default is no thinking: a request without `thinking` gets none from a thinking model either
    fields["chat_template_kwargs"] = {"enable_thinking": body.thinking is not None and body.thinking.type != "disabled"}
    if isinstance(body, MessagesRequest):
        fields.update(max_tokens=body.max_tokens, stop=body.stop_sequences, temperature=body.temperature,
                      top_p=body.top_p, top_k=body.top_k)
        if (output := body.output_config) is not None and output.format is not None:
            fields["response_format"] = {"type": "json_schema", "json_schema": {"schema": output.format.schema_}}
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise validation_error(list(e.errors())) from None


def chat_messages(body: CountTokensRequest) -> list[dict]:
    if body.messages[-1].role == "assistant":
        raise BadRequestError("the last message must be a user turn: continuing an assistant turn (prefill) is "
                              "not supported", param="messages")
    system = [{"type": "text", "text": body.system}] if isinstance(body.system, str) else [
        {"type": "text", "text": b.text} for b in body.system or ()]
    out = [{"role": "system", "content": system}] if any(part["text"] for part in system) else []
    for i, message in enumerate(body.messages):
        out += _user_turn(i, message) if message.role == "user" else [_assistant_turn(i, message)]
    return out


def _blocks(message: MessageParam) -> list:
    return [TextBlock(type="text", text=message.content)] if isinstance(message.content, str) else message.content


def _user_turn(i: int, message: MessageParam) -> list[dict]:
    """Tool results as tool turns (Anthropic puts them first), then the user's text."""
    results, parts = [], []
    for j, block in enumerate(_blocks(message)):
        where = f"messages.{i}.content.{j}"
        if block.type == "text":
            parts.append({"type": "text", "text": block.text})
        elif block.type == "tool_result":
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_text(block, where)})
        else:
            raise _unsupported(block.type, where, "user")
    return results + ([{"role": "user", "content": parts}] if parts or not results else [])


def _assistant_turn(i: int, message: MessageParam) -> dict:
    parts, calls, reasoning = [], [], []
    for j, block in enumerate(_blocks(message)):
        if block.type == "text":
            parts.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}})
        elif block.type == "thinking":
            reasoning.append(block.thinking)
        elif block.type != "redacted_thinking":  # encrypted by Anthropic: nothing a local model can read
            raise _unsupported(block.type, f"messages.{i}.content.{j}", "assistant")
    turn = {"role": "assistant", "content": parts or None}
    if reasoning:
        turn["reasoning_content"] = "\n".join(reasoning)
    if calls:
        turn["tool_calls"] = calls
    return turn


def _result_text(block, where: str) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        for k, part in enumerate(block.content):
            if part.type != "text":
                raise _unsupported(part.type, f"{where}.content.{k}", "user")
        text = "\n".join(part.text for part in block.content)
    return f"Error: {text}" if block.is_error else text


def _unsupported(kind: str, where: str, role: str) -> BadRequestError:
    if kind in ("image", "document"):
        message = f"{where}: {kind} blocks are not supported; corral serves text models"
    else:
        message = f"{where}: a {kind} block cannot be part of {'an' if role == 'assistant' else 'a'} {role} turn"
    return BadRequestError(message, param=where)


def tool_fields(body: CountTokensRequest) -> dict:
    tools = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type not in (None, "custom"):
            raise BadRequestError(f"tools.{i}: Anthropic's server tool {tool.type!r} is not supported; give client "
                                  "tools (name, description, input_schema)", param=f"tools.{i}.type")
        function = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    choice = body.tool_choice
    if choice is None or (not tools and choice.type in ("auto", "none")):
        return {"tools": tools or None}
    fields = {"tools": tools or None, "tool_choice": TOOL_CHOICES.get(choice.type)}
    if choice.type == "tool":
        if choice.name is None:
            raise BadRequestError('tool_choice of type "tool" needs the name of a tool', param="tool_choice.name")
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    return fields
