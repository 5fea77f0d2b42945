"""Model outputs as the models write them (special tokens kept where the server keeps them), with what
a parser must find in each: (parser, text, content, [(name, arguments)])."""
from corral.tool_parsers.generic import JsonToolParser
from corral.tool_parsers.hermes import HermesToolParser
from corral.tool_parsers.llama3_json import Llama3JsonToolParser

WEATHER = {"city": "Paris", "unit": "celsius"}

OUTPUTS = {
    "qwen3_one_call": (
        HermesToolParser,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        None, [("get_weather", WEATHER)]),
    "qwen3_two_calls_after_content": (
        HermesToolParser,
        "I'll look up the weather in Paris and the local time there.\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris", '
        '"format": "{hh}:{mm} \\"24h\\"", "fields": [{"k": "}"}, 1.5e3, null, true]}}\n</tool_call>',
        "I'll look up the weather in Paris and the local time there.",
        [("get_weather", WEATHER), ("get_time", {"timezone": "Europe/Paris", "format": '{hh}:{mm} "24h"',
                                                 "fields": [{"k": "}"}, 1500.0, None, True]})]),
    "qwen3_plain_answer": (
        HermesToolParser, "The capital of France is Paris. Use <b>bold</b> or a < b for emphasis.",
        "The capital of France is Paris. Use <b>bold</b> or a < b for emphasis.", []),
    "qwen3_malformed_block": (
        HermesToolParser,
        "Let me check.\n<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n</tool_call>",
        "Let me check.\n<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n</tool_call>", []),
    "qwen3_keys_in_another_order_and_text_after": (
        HermesToolParser,
        '<tool_call>\n{"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}\n</tool_call>\n\n'
        "Checking now.",
        "Checking now.", [("get_weather", WEATHER)]),
    "qwen3_unknown_tool_name": (
        HermesToolParser, '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>',
        None, [("launch_rocket", {})]),
    "llama31_python_tag": (
        Llama3JsonToolParser,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        None, [("get_weather", WEATHER)]),
    "llama32_calls_separated_by_semicolons": (
        Llama3JsonToolParser,
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
        '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}',
        None, [("get_weather", WEATHER), ("get_time", {"timezone": "Europe/Paris"})]),
    "llama3_plain_answer": (
        Llama3JsonToolParser, "It is sunny in Paris today, around 21 °C {roughly}.",
        "It is sunny in Paris today, around 21 °C {roughly}.", []),
    "llama3_json_that_is_not_a_call": (
        Llama3JsonToolParser, '{"city": "Paris", "population": 2102650}',
        '{"city": "Paris", "population": 2102650}', []),
    "llama3_builtin_tool_code": (
        Llama3JsonToolParser, '<|python_tag|>brave_search.call(query="weather in Paris")',
        '<|python_tag|>brave_search.call(query="weather in Paris")', []),
    "json_object": (
        JsonToolParser, '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        None, [("get_weather", WEATHER)]),
    "json_list_in_a_fence": (
        JsonToolParser,
        '```json\n[\n  {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},\n'
        '  {"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n]\n```',
        None, [("get_weather", WEATHER), ("get_time", {"timezone": "Europe/Paris"})]),
    "json_plain_answer": (
        JsonToolParser, "Paris is the capital of France.", "Paris is the capital of France.", []),
    "json_object_that_is_not_a_call": (
        JsonToolParser, '{"answer": "Paris", "confidence": 0.9}', '{"answer": "Paris", "confidence": 0.9}', []),
}
