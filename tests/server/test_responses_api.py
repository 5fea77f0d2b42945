"""OpenAI's Responses API with the official openai client's `responses` against a real server of the tiny random
models (a 2048 context: the generic tool prompt is some 800 tokens on their tokenizer). References: the chat
completions route for the same conversation at temperature 0, transformers' apply_chat_template for the prompt a
conversation of items must render to (its length is the usage's input_tokens), jsonschema for tool arguments and
structured output. The server has two API keys, to check that one key never sees another's responses."""
import json

import httpx
import jsonschema
import openai
import pytest

from corral.server.responses.store import ResponseStore, StoredResponse
from tests.server.helpers import ServerThread, tool_models_config

KEYS = ("key-one", "key-two")
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"], "additionalProperties": False}}
ADD = {"type": "function", "name": "add", "description": "Add two numbers.",
       "parameters": {"type": "object", "properties": {
           "a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
           "required": ["a", "b"], "additionalProperties": False}}
PARAMETERS = {t["name"]: t["parameters"] for t in (WEATHER, ADD)}
FORECAST = {"type": "object", "properties": {
    "city": {"type": "string", "pattern": "^[A-Za-z]{1,10}$"}, "sky": {"type": "string", "enum": ["clear", "rain"]},
    "celsius": {"type": "integer", "minimum": -40, "maximum": 50}},
    "required": ["city", "sky", "celsius"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tool_models, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("responses") / "keys"
    key_file.write_text("\n".join(KEYS) + "\n")
    config = tool_models_config(tool_models, ["tiny-qwen3", "tiny-llama"], api_key_file=str(key_file),
                                max_stored_responses=50)
    running = ServerThread(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[0], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def other_client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[1], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizers(tool_models):
    from transformers import AutoTokenizer
    return {name: AutoTokenizer.from_pretrained(tool_models[name]) for name in ("tiny-qwen3", "tiny-llama")}


def prompt_length(tokenizer, messages: list[dict], **kwargs) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False,
                                             **kwargs))


def message_texts(response) -> list[str]:
    return [part.text for item in response.output if item.type == "message" for part in item.content]


def calls_of(response) -> list[tuple[str, dict]]:
    return [(item.name, json.loads(item.arguments)) for item in response.output if item.type == "function_call"]


# --- creating a response


def test_a_string_input_answers_as_chat_completions_does(client):
    response = client.responses.create(model="tiny-llama", input="Hello there", temperature=0, max_output_tokens=12)
    chat = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hello there"}],
                                          temperature=0, max_tokens=12)
    assert response.id.startswith("resp_") and response.object == "response" and response.error is None
    assert response.model == "tiny-llama" and response.temperature == 0 and response.max_output_tokens == 12
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert message.content[0].text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_items_and_instructions_render_as_a_chat_conversation(client, tokenizers):
    items = [{"role": "developer", "content": "Be brief."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
             {"role": "user", "content": "Tell me more."}]
    response = client.responses.create(model="tiny-llama", instructions="You are terse.", input=items,
                                       max_output_tokens=4, temperature=0)
    expected = [{"role": "system", "content": "You are terse."}, {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me more."}]
    assert response.instructions == "You are terse."
    assert response.usage.input_tokens == prompt_length(tokenizers["tiny-llama"], expected)


def test_max_output_tokens_cuts_the_response_off_as_incomplete(client):
    response = client.responses.create(model="tiny-llama", input="Count to a hundred", max_output_tokens=3,
                                       temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and response.output[-1].status == "incomplete"


def test_a_thinking_model_s_reasoning_comes_back_as_a_reasoning_item(client):
    # the tiny Qwen3 template leaves the prompt inside <think>: what the model writes is its reasoning
    response = client.responses.create(model="tiny-qwen3", input="Why?", max_output_tokens=8, temperature=0,
                                       reasoning={"effort": "high"})
    chat = client.chat.completions.create(model="tiny-qwen3", messages=[{"role": "user", "content": "Why?"}],
                                          max_tokens=8, temperature=0)
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == []
    assert reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text == chat.choices[0].message.reasoning_content
    assert response.usage.output_tokens_details.reasoning_tokens > 0


def test_reasoning_effort_none_turns_thinking_off(client, tokenizers):
    response = client.responses.create(model="tiny-qwen3", input="Why?", max_output_tokens=4, temperature=0,
                                       reasoning={"effort": "none"})
    off = prompt_length(tokenizers["tiny-qwen3"], [{"role": "user", "content": "Why?"}], enable_thinking=False)
    on = prompt_length(tokenizers["tiny-qwen3"], [{"role": "user", "content": "Why?"}])
    assert off != on and response.usage.input_tokens == off
    assert all(item.type != "reasoning" for item in response.output)


# --- streaming

TEXT_ITEM = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done"]


def collapsed(types: list[str]) -> list[str]:
    """Event types with runs of the same delta event counted once."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


def test_streamed_events_come_in_the_documented_order_and_text_equals_the_unstreamed_answer(client):
    args = dict(model="tiny-llama", input="Tell me a story", temperature=0, max_output_tokens=20)
    whole = client.responses.create(**args)
    events = list(client.responses.create(stream=True, **args))
    types = [e.type for e in events]
    assert collapsed(types) == ["response.created", "response.in_progress", *TEXT_ITEM, "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == message_texts(whole)[0] == events[-4].text
    final = events[-1].response
    assert final.status == "incomplete" and message_texts(final) == [text] and final.id == events[0].response.id
    assert final.usage.output_tokens == whole.usage.output_tokens == 20


def test_the_sdk_stream_helper_assembles_the_streamed_response(client):
    # a short schema ends the output (the helper wants response.completed, which a cut-off response lacks)
    sky = {"type": "object", "properties": {"sky": {"enum": ["clear", "rain"]}}, "required": ["sky"],
           "additionalProperties": False}
    args = dict(model="tiny-llama", input="The sky?", temperature=0, max_output_tokens=50,
                text={"format": {"type": "json_schema", "name": "sky", "schema": sky}})
    whole = client.responses.create(**args)
    with client.responses.stream(**args) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert whole.status == final.status == "completed"
    assert final.output_text == "".join(deltas) == whole.output_text
    jsonschema.validate(json.loads(final.output_text), sky)


def test_streamed_reasoning_comes_as_reasoning_text_events(client):
    events = list(client.responses.create(model="tiny-qwen3", input="Why?", max_output_tokens=8, temperature=0,
                                          stream=True))
    types = collapsed([e.type for e in events])
    assert types[2:8] == ["response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
                          "response.reasoning_text.done", "response.content_part.done", "response.output_item.done"]
    text = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert events[-1].response.output[0].content[0].text == text


# --- tools


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-llama"])
def test_required_gives_function_calls_whose_arguments_match_the_parameters(client, model):
    for seed in range(2):
        response = client.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER, ADD],
                                           tool_choice="required", parallel_tool_calls=False, temperature=1.0,
                                           max_output_tokens=300, extra_body={"seed": seed})
        (call,) = [item for item in response.output if item.type == "function_call"]
        assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])


def test_a_named_function_is_called_with_valid_arguments(client):
    response = client.responses.create(model="tiny-llama", input="Add two and three", tools=[WEATHER, ADD],
                                       tool_choice={"type": "function", "name": "add"}, max_output_tokens=300)
    ((name, arguments),) = calls_of(response)
    assert name == "add"
    jsonschema.validate(arguments, ADD["parameters"])
    assert response.tool_choice.name == "add" and [t.name for t in response.tools] == ["get_weather", "add"]


def test_streamed_calls_reassemble_to_the_unstreamed_ones(client):
    args = dict(model="tiny-qwen3", input="What is the weather in Paris?", tools=[WEATHER],
                tool_choice={"type": "function", "name": "get_weather"}, temperature=0, max_output_tokens=300)
    whole = client.responses.create(**args)
    events = list(client.responses.create(stream=True, **args))
    types = collapsed([e.type for e in events])
    assert types[2:6] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done"]
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.output_item.done").item
    assert done.type == "function_call" and done.arguments == pieces
    assert json.loads(pieces) == calls_of(whole)[0][1]


def test_a_second_turn_with_the_function_output_renders_the_call_and_its_result(client):
    first = client.responses.create(model="tiny-llama", input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", parallel_tool_calls=False, max_output_tokens=300,
                                    temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    turn = [{"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, clear"}]
    second = client.responses.create(model="tiny-llama", input=turn, tools=[WEATHER], max_output_tokens=5,
                                     temperature=0, store=False)
    chat_turn = [{"role": "user", "content": "What is the weather in Paris?"},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function",
                                                                         "function": {"name": call.name,
                                                                                      "arguments": call.arguments}}]},
                 {"role": "tool", "tool_call_id": call.call_id, "content": "18 degrees, clear"}]
    chat = client.chat.completions.create(model="tiny-llama", messages=chat_turn,
                                          tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items()
                                                                                   if k != "type"}}],
                                          max_tokens=5, temperature=0)
    assert second.status in ("completed", "incomplete")
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    assert second.output_text == (chat.choices[0].message.content or "")


# --- structured output


def test_a_json_schema_text_format_gives_output_that_validates(client):
    response = client.responses.create(
        model="tiny-qwen3", input="The forecast for Paris, as JSON.", max_output_tokens=200, temperature=1.0,
        text={"format": {"type": "json_schema", "name": "forecast", "schema": FORECAST, "strict": True}})
    jsonschema.validate(json.loads(response.output_text), FORECAST)
    assert response.text.format.type == "json_schema" and response.text.format.name == "forecast"


# --- the store


def test_previous_response_id_continues_the_conversation(client, tokenizers):
    first = client.responses.create(model="tiny-llama", input="Hi", max_output_tokens=6, temperature=0)
    second = client.responses.create(model="tiny-llama", input="And then?", previous_response_id=first.id,
                                     max_output_tokens=6, temperature=0)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "And then?"}]
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens == prompt_length(tokenizers["tiny-llama"], conversation)
    items = client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message", "message", "message"]
    assert [item.role for item in items.data] == ["user", "assistant", "user"]
    newest = client.responses.input_items.list(second.id, limit=1)  # newest first by default
    assert newest.data[0].content[0].text == "And then?" and newest.has_more


def test_a_stored_response_can_be_read_back_and_deleted(client):
    created = client.responses.create(model="tiny-llama", input="Hi", max_output_tokens=4, metadata={"k": "v"})
    read = client.responses.retrieve(created.id)
    assert read.model_dump() == created.model_dump() and read.metadata == {"k": "v"}
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_a_streamed_response_is_stored_too(client):
    events = list(client.responses.create(model="tiny-llama", input="Hi", max_output_tokens=4, stream=True))
    assert client.responses.retrieve(events[0].response.id).output_text == events[-1].response.output_text


def test_store_false_keeps_nothing(client):
    created = client.responses.create(model="tiny-llama", input="Hi", max_output_tokens=4, store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="tiny-llama", input="More", previous_response_id=created.id)
    assert e.value.body["param"] == "previous_response_id"


def test_one_api_key_cannot_read_or_continue_another_key_s_responses(client, other_client):
    created = client.responses.create(model="tiny-llama", input="Hi", max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.create(model="tiny-llama", input="More", previous_response_id=created.id)
    assert client.responses.retrieve(created.id).id == created.id


def test_the_store_keeps_the_most_recently_used_responses():
    store = ResponseStore(2)
    for name in ("a", "b"):
        store.put(StoredResponse({"id": name, "output": []}, [], None))
    assert store.get("a", None) is not None  # a is now the most recently used
    store.put(StoredResponse({"id": "c", "output": []}, [], None))
    assert store.get("b", None) is None and store.get("a", None) and store.get("c", None) and len(store) == 2
    assert store.get("a", "some key") is None


# --- bad input


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"type": "image_generation_call", "id": "x"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input.0.content.0"),
    ({"input": [{"role": "robot", "content": "Hi"}]}, "input.0.role"),
    ({"input": [{"type": ["message"], "role": "user", "content": "Hi"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text"),
    ({"input": []}, "input"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"max_output_tokens": 5000}, "input"),
    ({"temperature": -1.0}, "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"stream": True, "tools": [{"type": "file_search"}]}, "tools"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"background": True}, "background"),
])
def test_bad_input_gets_a_400_naming_the_parameter(client, extra, param):
    args = {"model": "tiny-llama", "input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**args)
    assert e.value.body["param"] == param, e.value.body


def test_an_error_of_the_chat_path_names_the_responses_parameter_in_its_message(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny-llama", input="Hi", max_output_tokens=0)
    message = e.value.body["message"]
    assert "max_output_tokens" in message and "max_tokens" not in message and "completion" not in message, message


def test_an_unknown_response_id_gets_a_404_in_openai_s_shape(server):
    r = httpx.get(f"{server.url}/v1/responses/resp_nope", headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
