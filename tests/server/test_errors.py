"""Bad input gets an OpenAI-style error with the right status, and the server keeps serving."""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.server.helpers import API_KEY, CHAT, GOOD, error_of

LONG_PROMPT = "Hello world! " * 200  # about 600 tokens with the tiny tokenizer, past max_model_len 512


@pytest.fixture
def still_serving(http):
    """After the bad request, a good one succeeds."""
    yield
    r = http.post(CHAT, json=GOOD)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("body, param", [
    ({**GOOD, "temperature": "hot"}, "temperature"),
    ({**GOOD, "max_tokens": 1.5}, "max_tokens"),
    ({**GOOD, "n": "2"}, "n"),
    ({**GOOD, "stream": "yes"}, "stream"),
    ({**GOOD, "messages": "Hi"}, "messages"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({**GOOD, "messages": [{"role": "wizard", "content": "Hi"}]}, "messages.0.role"),
    ({"model": "tiny-llama"}, "messages"),
    ({**GOOD, "messages": []}, "messages"),
    ({**GOOD, "stop": [1, 2]}, "stop"),
    ({**GOOD, "logit_bias": {"5": "high"}}, "logit_bias.5"),
])
def test_wrong_types_get_400_naming_the_parameter(http, still_serving, body, param):
    error = error_of(http.post(CHAT, json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]
    wrong_value = body.get("messages") == [] or param == "messages.0.role"  # the right type, a bad value
    expected = "missing_required_parameter" if "messages" not in body else "invalid_value" if wrong_value else "invalid_type"
    assert error["code"] == expected


@pytest.mark.parametrize("body, param", [
    ({**GOOD, "temperature": -1}, "temperature"),
    ({**GOOD, "top_p": 2.0}, "top_p"),
    ({**GOOD, "n": 0}, "n"),
    ({**GOOD, "max_tokens": 0}, "max_tokens"),
    ({**GOOD, "presence_penalty": 3}, "presence_penalty"),
    ({**GOOD, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({**GOOD, "top_logprobs": 2}, "top_logprobs"),
    ({**GOOD, "logit_bias": {"x": 1}}, "logit_bias"),
    ({**GOOD, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
])
def test_out_of_range_values_get_400_naming_the_parameter(http, still_serving, body, param):
    error = error_of(http.post(CHAT, json=body), 400)
    assert error["param"] == param


@pytest.mark.parametrize("turn, param", [
    ({"role": "assistant", "tool_calls": "get_weather"}, "messages.0.tool_calls"),
    ({"role": "assistant", "tool_calls": [None]}, "messages.0.tool_calls.0"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": "get_weather"}]},
     "messages.0.tool_calls.0.function"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]},
     "messages.0.tool_calls.0.function.name"),
    ({"role": "tool", "tool_call_id": ["c1"], "content": "sunny"}, "messages.0.tool_call_id"),
])
def test_malformed_tool_turns_get_400_naming_the_field(http, still_serving, turn, param):
    body = {**GOOD, "messages": [turn, {"role": "user", "content": "And tomorrow?"}]}
    assert error_of(http.post(CHAT, json=body), 400)["param"] == param
    r = http.post("/tokenize", json={"model": "tiny-llama", "messages": body["messages"]})
    assert error_of(r, 400)["param"] == param


def test_tokenize_with_no_messages_gets_400(http, still_serving):
    error = error_of(http.post("/tokenize", json={"model": "tiny-llama", "messages": []}), 400)
    assert error["param"] == "messages"


def test_tokenize_refuses_what_the_chat_route_refuses(http, still_serving):
    """/tokenize builds the chat request, so every check of the chat route holds there too (here a tool's
    name holding a lone surrogate, which JSON can carry and text cannot)."""
    body = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}],
                       "tools": [{"type": "function", "function": {"name": "\ud800", "parameters": {}}}]})
    headers = {"content-type": "application/json"}
    on_chat = error_of(http.post(CHAT, content=body, headers=headers), 400)
    assert error_of(http.post("/tokenize", content=body, headers=headers), 400)["param"] == on_chat["param"] == "tools"


def test_a_text_part_without_its_text_gets_400_saying_so(http, still_serving):
    body = {**GOOD, "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    error = error_of(http.post(CHAT, json=body), 400)
    assert error["param"] == "messages.0.content.0.text" and "needs its text" in error["message"]


def test_malformed_json_gets_400(http, still_serving):
    r = http.post(CHAT, content=b'{"model": "tiny-llama", "messages": [', headers={"content-type": "application/json"})
    error = error_of(r, 400)
    assert "JSON" in error["message"] and error["type"] == "invalid_request_error"


def test_a_body_that_is_not_an_object_gets_400(http, still_serving):
    error_of(http.post(CHAT, json=[1, 2, 3]), 400)


def test_unknown_model_gets_404_listing_the_served_ones(http, served_models, still_serving):
    error = error_of(http.post(CHAT, json={**GOOD, "model": "gpt-17"}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "gpt-17" in error["message"] and all(name in error["message"] for name in served_models)


def test_unknown_model_raises_not_found_in_the_openai_client(openai_client, still_serving):
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="nope", prompt="Hi", max_tokens=2)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
def test_missing_or_wrong_api_key_gets_401(server, still_serving, headers):
    r = httpx.post(f"{server.url}{CHAT}", json=GOOD, headers=headers, timeout=30)
    error = error_of(r, 401)
    assert error["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401


def test_wrong_api_key_raises_authentication_error_in_the_openai_client(server, still_serving):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_health_and_metrics_need_no_key(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_prompt_plus_max_tokens_over_the_context_gets_400_with_both_numbers(http, still_serving):
    prompt = "Hello world! " * 30
    count = http.post("/tokenize", json={"model": "tiny-llama", "prompt": prompt}).json()["count"]
    r = http.post("/v1/completions", json={"model": "tiny-llama", "prompt": prompt, "max_tokens": 500})
    error = error_of(r, 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "512" in error["message"] and str(count + 500) in error["message"]
    assert f"{count} in the prompt" in error["message"] and "500 in the completion" in error["message"]


def test_a_prompt_longer_than_the_context_gets_400(openai_client, still_serving):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": LONG_PROMPT}])
    assert "maximum context length is 512" in info.value.message


def test_token_ids_outside_the_vocabulary_get_400(http, still_serving):
    error = error_of(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": [1, 2, 99999]}), 400)
    assert error["param"] == "prompt"


def test_server_side_failure_gets_500_without_details(http, monkeypatch, still_serving):
    import corral.server.serving_chat as serving_chat

    async def broken(*args, **kwargs):
        raise RuntimeError("secret internals /etc/passwd")
    monkeypatch.setattr(serving_chat, "collect_chat", broken)
    error = error_of(http.post(CHAT, json=GOOD), 500)
    assert error["type"] == "internal_server_error" and "secret" not in error["message"]
    monkeypatch.undo()


def test_past_the_bounded_queue_requests_get_429(server, http, still_serving):
    spec = server.client("tiny-llama").spec
    saved = spec.max_num_seqs, spec.max_queue_len
    spec.max_num_seqs, spec.max_queue_len = 1, 1  # two in flight at most
    body = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 300, "ignore_eos": True}
    try:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: http.post("/v1/completions", json=body), range(6)))
    finally:
        spec.max_num_seqs, spec.max_queue_len = saved
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and set(statuses) == {200, 429}
    error = error_of(next(r for r in responses if r.status_code == 429), 429)
    assert error["code"] == "queue_full" and "limit" in error["message"]
