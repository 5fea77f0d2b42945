"""Tool calling on chat completions: the request's tools checked, what the chat template sees, the JSON
schema that enforces `required` and a named function, and which parser turns the output into calls.

A model whose chat template shows `tools` and whose format a tool parser knows gets the tools through
its template and its own parser for `auto`. Any other model is generic: the tools are described in the
system message (generic_tool_prompt), earlier calls and their results become plain turns, and its
output is read as JSON. `required` and a named function are held by a grammar whatever the model:
a JSON list of {"name", "arguments"} of the given tools, or the named function's arguments object.
"""
import copy
import json
import re
from dataclasses import dataclass

from corral.server.errors import BadRequestError
from corral.tool_parsers import DeltaMessage, DeltaToolCall, ParsedToolCalls, ToolCall, generic_tool_prompt
from corral.tool_parsers.base import new_call_id

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
PROBE_TOOLS = [{"type": "function", "function": {"name": "corral_probe_tool", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}]
PROBE_MESSAGES = [{"role": "user", "content": "probe"}]


@dataclass(slots=True)
class ToolPlan:
    """A request's tools (OpenAI function tools, checked) and how its output is to call them."""

    tools: list[dict]
    choice: str                 # none | auto | required | function
    function: str | None = None  # the function tool_choice names
    parallel: bool = True

    @classmethod
    def from_request(cls, tools: list | None, tool_choice, parallel_tool_calls: bool | None) -> "ToolPlan | None":
        """None when the request has no tools; 400 naming the parameter for what OpenAI would refuse."""
        if not tools:
            if tool_choice not in (None, "none"):
                raise BadRequestError("tool_choice is only allowed when tools are specified", param="tool_choice")
            return None
        names = [_check_tool(i, tool) for i, tool in enumerate(tools)]
        if len(set(names)) != len(names):
            raise BadRequestError("tool names must be unique", param="tools")
        parallel = parallel_tool_calls is not False
        if tool_choice is None or tool_choice in ("none", "auto", "required"):
            return cls(tools, tool_choice or "auto", None, parallel)
        if isinstance(tool_choice, dict):
            function = tool_choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if tool_choice.get("type") != "function" or not isinstance(name, str):
                raise BadRequestError('tool_choice must be "none", "auto", "required" or {"type": "function", '
                                      '"function": {"name": ...}}', param="tool_choice")
            if name not in names:
                raise BadRequestError(f"tool_choice names the function {name!r}, which is not among the tools "
                                      f"({', '.join(names)})", param="tool_choice")
            return cls(tools, "function", name, parallel)
        raise BadRequestError(f'tool_choice must be "none", "auto", "required" or a function, got {tool_choice!r}',
                              param="tool_choice")

    def schema(self) -> dict | None:
        """The JSON schema the output must match, for `required` and a named function."""
        parameters = {t["function"]["name"]: _parameters(t) for t in self.tools}
        if self.choice == "function":
            return parameters[self.function]
        if self.choice != "required":
            return None
        calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [name]}, "arguments": params},
                  "required": ["name", "arguments"], "additionalProperties": False}
                 for name, params in parameters.items()]
        schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
        if not self.parallel:
            schema["maxItems"] = 1
        return schema


def _check_tool(i: int, tool) -> str:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise BadRequestError(f'{where} must be {{"type": "function", "function": {{"name": ..., "parameters": '
                              '...}}', param="tools")
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise BadRequestError(f"{where}.function.name must be 1 to 64 letters, digits, _ or -, got {name!r}",
                              param="tools")
    parameters = function.get("parameters", {"type": "object"})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise BadRequestError(f"{where}.function.parameters must be a JSON schema of an object "
                              f'({{"type": "object", "properties": ...}})', param="tools")
    return name


def _parameters(tool: dict) -> dict:
    parameters = dict(tool["function"].get("parameters") or {})
    parameters["type"] = "object"
    return parameters


def template_shows_tools(render, chat_template_kwargs: dict | None = None) -> bool:
    """Whether a chat template renders `tools`: a probe conversation rendered with and without a tool.
    `render(messages, add_generation_prompt, chat_template_kwargs, tools)` is InputProcessor.render_chat."""
    try:
        return (render(PROBE_MESSAGES, True, chat_template_kwargs, PROBE_TOOLS)
                != render(PROBE_MESSAGES, True, chat_template_kwargs, None))
    except Exception:  # a template that cannot render the probe: treat its tools as unseen
        return False


def generic_messages(messages: list[dict], plan: ToolPlan | None) -> list[dict]:
    """Messages for a model without a tool format: the tools described in the system message (unless
    tool_choice is none), earlier calls as the JSON the prompt asks for, tool results as user turns."""
    out, names = [], {}
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                function = call["function"]
                names[call.get("id")] = function["name"]
                calls.append({"name": function["name"], "arguments": function.get("arguments", {})})
            text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            m = {k: v for k, v in m.items() if k != "tool_calls"}
            m["content"] = f"{m['content']}\n\n{text}" if m.get("content") else text
        elif m["role"] == "tool":
            name = names.get(m.get("tool_call_id")) or m.get("name")
            text = f"Result of {name}: {m.get('content', '')}" if name else f"Tool result: {m.get('content', '')}"
            if out and out[-1].get("_tool_results"):  # results of parallel calls: one user turn
                out[-1]["content"] += "\n\n" + text
                continue
            m = {"role": "user", "content": text, "_tool_results": True}
        out.append(m)
    out = [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]
    if plan is not None and plan.choice != "none":
        prompt = generic_tool_prompt(plan.tools)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def template_arguments(messages: list[dict]) -> list[dict]:
    """Assistant tool_calls with their arguments as objects, as chat templates (Qwen, Llama 3.1) expect;
    OpenAI sends them as JSON text. Arguments that are not a JSON object stay text."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m = copy.deepcopy(m)
            for call in m["tool_calls"]:
                function = call["function"]
                if isinstance(function.get("arguments"), str):
                    try:
                        arguments = json.loads(function["arguments"])
                    except ValueError:
                        continue
                    if isinstance(arguments, dict):
                        function["arguments"] = arguments
        out.append(m)
    return out


class NamedCallParser:
    """tool_choice names a function: the output is its arguments object (a grammar holds it), the call's
    name is known. parse/feed/finish as a ToolParser."""

    def __init__(self, name: str):
        self.name, self.started, self.id = name, False, new_call_id()

    def parse(self, text: str) -> ParsedToolCalls:
        try:
            arguments = json.loads(text)
        except ValueError:  # cut off by max_tokens
            return ParsedToolCalls(text or None, [])
        if not isinstance(arguments, dict):
            return ParsedToolCalls(text or None, [])
        return ParsedToolCalls(None, [ToolCall(self.name, json.dumps(arguments, ensure_ascii=False), self.id)])

    def feed(self, text: str) -> list[DeltaMessage]:
        if not text:
            return []
        out = []
        if not self.started:
            self.started = True
            out.append(DeltaMessage(tool_calls=[DeltaToolCall(0, "", self.id, self.name)]))
        out.append(DeltaMessage(tool_calls=[DeltaToolCall(0, text)]))
        return out

    def finish(self) -> list[DeltaMessage]:
        return []


class SingleCall:
    """parallel_tool_calls false: the first call of what a parser reads; later ones are dropped."""

    def __init__(self, parser):
        self.parser = parser

    def parse(self, text: str) -> ParsedToolCalls:
        parsed = self.parser.parse(text)
        return ParsedToolCalls(parsed.content, parsed.tool_calls[:1])

    def feed(self, text: str) -> list[DeltaMessage]:
        return self._first(self.parser.feed(text))

    def finish(self) -> list[DeltaMessage]:
        return self._first(self.parser.finish())

    @staticmethod
    def _first(messages: list[DeltaMessage]) -> list[DeltaMessage]:
        out = []
        for m in messages:
            if m.tool_calls:
                m = DeltaMessage(tool_calls=[t for t in m.tool_calls if t.index == 0])
                if not m.tool_calls:
                    continue
            out.append(m)
        return out


def is_generic(client, template_kwargs: dict) -> bool:
    """Whether the tools are described in the system message and calls read as JSON (the model, or the
    template this request brings, has no tool format) rather than shown by the chat template."""
    if client.tool_parser is None:
        return True
    if "chat_template" in template_kwargs:
        return not template_shows_tools(client.input_processor.render_chat, template_kwargs)
    return False


def output_parser(plan: ToolPlan | None, client, generic: bool):
    """What reads this request's output into calls; None when calls are not parsed (no tools, or none)."""
    if plan is None or plan.choice == "none":
        return None
    if plan.choice == "function":
        return NamedCallParser(plan.function)
    use_json = generic or plan.choice == "required"  # required: the grammar's JSON list of calls
    parser = (client.json_tool_parser if use_json else client.tool_parser)(plan.tools)
    return parser if plan.parallel else SingleCall(parser)
