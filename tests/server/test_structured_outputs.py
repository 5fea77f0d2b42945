"""Structured outputs through the server, with the official openai client: response_format
(json_schema, json_object), vLLM's structured_outputs and guided_* extras, streamed and not; what the
random tiny models produce validates whatever their weights; bad grammars get 400 naming the field.
Strings are bounded by patterns: xgrammar lets random weights put together byte sequences that are not
valid UTF-8 inside a string, which decode to several U+FFFD and so break a maxLength (real models do
not write such bytes)."""
import json
import re
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
    "population": {"type": "integer", "minimum": 0, "maximum": 40_000_000},
    "districts": {"type": "array", "items": {"enum": ["north", "south", "old town"]}, "maxItems": 3}},
    "required": ["city", "population", "districts"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Describe Paris as JSON."}]
TINY = ["tiny-qwen3", "tiny-llama"]


class Weather(BaseModel):
    city: str = Field(pattern=r"^[A-Za-z]{1,10}$")
    sky: Literal["clear", "cloudy", "rain"]
    celsius: int = Field(ge=-40, le=50)


@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_response_format_validates_whatever_the_weights(openai_client, model, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        kwargs = dict(model=model, messages=MESSAGES, response_format=response_format, max_tokens=200,
                      temperature=1.0, seed=seed)
        if stream:
            chunks = openai_client.chat.completions.create(stream=True, **kwargs)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = openai_client.chat.completions.create(**kwargs).choices[0].message.content
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("model", TINY)
def test_the_openai_parse_helper_gets_a_pydantic_object(openai_client, model):
    completion = openai_client.chat.completions.parse(model=model, messages=MESSAGES, response_format=Weather,
                                                      max_tokens=100, temperature=1.0, seed=3)
    weather = completion.choices[0].message.parsed
    assert isinstance(weather, Weather) and weather.sky in ("clear", "cloudy", "rain")


@pytest.mark.parametrize("extra, check", [
    ({"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{2}"}}, lambda t: re.fullmatch("[A-Z]{3}-[0-9]{2}", t)),
    ({"structured_outputs": {"choice": ["red", "green", "blue"]}}, lambda t: t in ("red", "green", "blue")),
    ({"guided_choice": ["yes", "no"]}, lambda t: t in ("yes", "no")),
    ({"guided_regex": "(ab|cd){2,3}"}, lambda t: re.fullmatch("(ab|cd){2,3}", t)),
    ({"guided_json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
])
def test_vllm_s_structured_outputs_extras_on_completions(openai_client, extra, check):
    for seed in range(3):
        text = openai_client.completions.create(model="tiny-llama", prompt="Answer:", max_tokens=200, seed=seed,
                                                temperature=1.0, extra_body=extra).choices[0].text
        assert check(text), text


def test_json_object_mode_gives_json_from_a_real_model(openai_client, served_models):
    if "smollm2" not in served_models:
        pytest.skip("smollm2-135m-instruct is not available")
    reply = openai_client.chat.completions.create(
        model="smollm2", response_format={"type": "json_object"}, temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Give the capital of France as a JSON object with a key capital."}])
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such"}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"structured_outputs": {"regex": "([a-z"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_grammar": "root ::= nowhere"}, "guided_grammar"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
])
def test_a_grammar_that_cannot_be_compiled_gets_400_naming_the_field(openai_client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, max_tokens=5, extra_body=extra)
    assert info.value.body["param"] == param
    assert not re.search(r"\.cc:\d+|/project/", info.value.body["message"])  # no source path of xgrammar's build
