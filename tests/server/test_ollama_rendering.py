"""The Ollama layer without a server: a chat reply's pieces from recorded model outputs (tool calls come whole,
arguments as objects, as Ollama sends them) and Ollama's Go templates (trim markers, branches, what is refused)."""
import asyncio

import pytest

from corral.outputs import CompletionOutput, RequestOutput
from corral.server.errors import BadRequestError
from corral.server.ollama.serving import Reply
from corral.server.ollama.template import render_template
from corral.server.serving_chat import ChatGeneration

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


class _Client:
    reasoning_parser = None


async def _all(iterator) -> list:
    return [item async for item in iterator]


async def _outputs(pieces: list[str]):
    for i, text in enumerate(pieces):
        last = i == len(pieces) - 1
        yield RequestOutput("r", None, [1], [CompletionOutput(0, text, [5], finish_reason="stop" if last else None)],
                          finished=last)


def test_hermes_tool_calls_come_whole_with_arguments_as_objects():
    from corral.tool_parsers.hermes import HermesToolParser
    recorded = ['Let me check.<tool', '_call>\n{"name": "get_weather", "argu', 'ments": {"city": "Par', 'is"}}\n</tool_',
                'call>']
    generation = ChatGeneration("r", [1, 2], None, _outputs(recorded), False, lambda: HermesToolParser([WEATHER]),
                                lambda: None)
    pieces = asyncio.run(_all(Reply(generation, _Client(), 0, 0, True).pieces()))
    assert "".join(p.content for p in pieces) == "Let me check."
    assert [c for p in pieces for c in p.tool_calls] == [{"function": {"name": "get_weather",
                                                                        "arguments": {"city": "Paris"}}}]
    assert pieces[-1].tool_calls and not any(p.tool_calls for p in pieces[:-1])


def test_templates_trim_and_branch_as_go_s_do():
    template = "{{- if .System }}<s>{{ .System }}</s>{{ else }}none{{ end -}}  \n{{ .Prompt }}"
    assert render_template(template, {"System": "sys", "Prompt": "hi"}) == "<s>sys</s>hi"
    assert render_template(template, {"Prompt": "hi"}) == "nonehi"
    with pytest.raises(BadRequestError, match="range"):
        render_template("{{ range .Messages }}{{ .Content }}{{ end }}", {})
