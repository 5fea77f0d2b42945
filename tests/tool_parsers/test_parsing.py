"""Each format parses recorded outputs whole, and gives the same content and calls streamed in any pieces."""
import json
import random
import re

import pytest

from corral.tool_parsers.base import DeltaMessage, DeltaToolCall
from corral.tool_parsers.generic import JsonToolParser, generic_tool_prompt
from corral.tool_parsers.hermes import HermesToolParser
from tests.tool_parsers.recorded import OUTPUTS

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                                               "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def splits(text: str):
    for n in (1, 2, 3, 7):
        yield [text[i:i + n] for i in range(0, len(text), n)]
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(12, len(text) - 1))))
        yield [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def stream(parser_cls, pieces: list[str]) -> list[DeltaMessage]:
    parser = parser_cls(TOOLS)
    deltas = [d for piece in pieces for d in parser.feed(piece)]
    return deltas + parser.finish()


def collect(deltas: list[DeltaMessage]):
    """Content and calls as an OpenAI client assembles them from the chunks."""
    content, calls = "", {}
    for delta in deltas:
        chunk = delta.to_openai()
        assert list(chunk) == (["tool_calls"] if delta.tool_calls else ["content"])
        content += chunk.get("content") or ""
        for t in chunk.get("tool_calls", []):
            if "id" in t:
                assert t["index"] not in calls, "id and name go out once per call"
                assert t["type"] == "function" and t["function"]["arguments"] == ""
                calls[t["index"]] = {"id": t["id"], "name": t["function"]["name"], "arguments": ""}
            else:
                assert set(t) == {"index", "function"} and set(t["function"]) == {"arguments"}
                calls[t["index"]]["arguments"] += t["function"]["arguments"]
    assert sorted(calls) == list(range(len(calls)))
    return content or None, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("case", OUTPUTS)
def test_a_whole_output_gives_its_content_and_calls(case):
    parser_cls, text, content, calls = OUTPUTS[case]
    parsed = parser_cls(TOOLS).parse(text)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == calls
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in parsed.tool_calls)


@pytest.mark.parametrize("case", OUTPUTS)
def test_a_streamed_output_gives_what_the_whole_parse_gives_however_it_is_split(case):
    parser_cls, text, _, _ = OUTPUTS[case]
    whole = parser_cls(TOOLS).parse(text)
    for pieces in splits(text):
        content, calls = collect(stream(parser_cls, pieces))
        assert content == whole.content, pieces
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
               [(c.name, json.loads(c.arguments)) for c in whole.tool_calls], pieces
        assert len({c["id"] for c in calls}) == len(calls)
        assert all(re.fullmatch(r"call_[0-9a-f]{24}", c["id"]) for c in calls)


def test_arguments_stream_while_the_call_is_being_generated():
    parser = HermesToolParser(TOOLS)
    deltas = parser.feed('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert [d.to_openai() for d in deltas][0] == {"content": "Sure."}
    assert deltas[1].tool_calls[0].name == "get_weather"
    assert deltas[2].to_openai() == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Par'}}]}
    assert parser.feed('is"}}\n</tool') == [DeltaMessage(tool_calls=[DeltaToolCall(0, 'is"}')])]
    assert parser.feed("_call>") == [] and parser.finish() == []


def test_text_that_may_open_a_tool_call_is_held_back_until_it_cannot():
    parser = HermesToolParser(TOOLS)
    assert [d.content for d in parser.feed("a <tool")] == ["a"]
    assert [d.content for d in parser.feed("_c")] == []
    assert [d.content for d in parser.feed("at>")] == [" <tool_cat>"]
    assert [d.content for d in parser.feed(" <")] == []
    assert [d.content for d in parser.finish()] == [" <"]


def test_a_call_left_open_when_the_output_ends_keeps_what_was_sent():
    parser = HermesToolParser(TOOLS)
    deltas = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}') + parser.finish()
    _, calls = collect(deltas)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_the_generic_prompt_lists_the_tools_and_the_answer_format():
    prompt = generic_tool_prompt(TOOLS)
    assert '"name": "get_weather"' in prompt and '"name": "get_time"' in prompt
    assert "Current weather in a city" in prompt
    assert '{"name": "<tool name>", "arguments":' in prompt and "list" in prompt
    parsed = JsonToolParser(TOOLS).parse('{"name": "get_time", "arguments": {}}')
    assert parsed.tool_calls[0].to_openai()["function"] == {"name": "get_time", "arguments": "{}"}
