"""Tool-call parsers: a model's output text -> content and OpenAI tool calls, whole or streamed.

One parser object per request, built with the request's `tools` (OpenAI's list of
{"type": "function", "function": {"name", "description", "parameters"}}):

    parser = registry.for_model(config.architectures, override, chat_template) or registry.resolve("json")
    p = parser(request.tools)

Whole output (`corral.tool_parsers.base`):

    p.parse(text) -> ParsedToolCalls(content: str | None, tool_calls: list[ToolCall])
    ToolCall(name, arguments: str (a JSON object), id="call_<hex>"); ToolCall.to_openai() is the
    message's {"id", "type": "function", "function": {"name", "arguments"}}

Streaming: `p.feed(delta_text) -> list[DeltaMessage]` for each new piece of text, then `p.finish()`
for what was held back. A DeltaMessage has either `content` (str) or `tool_calls`
(list[DeltaToolCall]); `DeltaMessage.to_openai()` is a chunk's `delta`:

    {"content": "..."}
    {"tool_calls": [{"index": 0, "id": "call_...", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]}   # once per call
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\\"city\\": \\"Par"}}]}  # then pieces

The pieces of one call concatenate to its arguments JSON (as the model wrote it; `parse` returns it
re-serialised). Arguments go out as they are generated; text that may still become a call (the start of
`<tool_call>`, `<|python_tag|>`, a `{` at the start of the output) is held back until it is known.

Formats, one module each: `hermes` (Qwen2.5/Qwen3), `llama3_json` (Llama 3.1-3.3), `json` (generic:
any model, with `generic.generic_tool_prompt(tools)` added to the system prompt). Names not among
the request's tools are kept (the server decides). Never raises on model output: what is not a call
is content. One case a stream cannot match the whole parse: a call whose JSON breaks after its
arguments began has already gone out (the whole parse makes that text content).
"""
from corral.tool_parsers.base import DeltaMessage, DeltaToolCall, ParsedToolCalls, ToolCall, ToolParser
from corral.tool_parsers.generic import generic_tool_prompt

__all__ = ["DeltaMessage", "DeltaToolCall", "ParsedToolCalls", "ToolCall", "ToolParser", "generic_tool_prompt"]
