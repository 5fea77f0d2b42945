"""Values that pass the type check but that the engine cannot take (int64 overflow, token ids outside the
vocabulary, millions of sequences) and options corral cannot honour get a 400, never an engine crash."""
import openai
import pytest

from tests.server.helpers import CHAT, GOOD, error_of

MODEL = GOOD["model"]


@pytest.fixture
def engine_survives(server, http):
    """The engine is not restarted by the request, and a good request still succeeds after it."""
    client = server.client(MODEL)
    restarts, pid = client.restarts, client.pid
    yield
    r = http.post(CHAT, json=GOOD)
    assert r.status_code == 200, r.text
    assert (client.restarts, client.pid) == (restarts, pid), "the request took the engine down"


@pytest.mark.parametrize("extra, param", [
    ({"seed": 2**64, "temperature": 1.0}, "seed"),             # torch.Generator: overflow
    ({"seed": -(2**63) - 1, "temperature": 1.0}, "seed"),
    ({"logit_bias": {"-1": 5}}, "logit_bias"),                 # would bias the last token
    ({"logit_bias": {"-100000": 5}}, "logit_bias"),            # IndexError in the sampler
    ({"logit_bias": {"-99999999999999999999": 5}}, "logit_bias"),  # int64 overflow in the sampler
    ({"logit_bias": {"99999999999999999999": 5}}, "logit_bias"),   # silently ignored before
])
def test_values_the_engine_cannot_take_get_400(http, engine_survives, extra, param):
    error = error_of(http.post(CHAT, json={**GOOD, **extra}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_seed_at_the_int64_bounds_is_served(openai_client, engine_survives):
    for seed in (2**63 - 1, -(2**63)):
        r = openai_client.chat.completions.create(model=MODEL, messages=GOOD["messages"], max_tokens=3, n=2,
                                                  temperature=1.0, seed=seed)
        assert [c.finish_reason for c in r.choices] == ["length", "length"]


def test_top_k_past_the_vocabulary_means_all_tokens(openai_client, engine_survives):
    kwargs = dict(model=MODEL, messages=GOOD["messages"], max_tokens=3, temperature=1.0, seed=7)  # not greedy
    expected = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    for top_k in (10**6, 2**63):  # 2**63 overflowed int64 in the engine and killed it
        r = openai_client.chat.completions.create(**kwargs, extra_body={"top_k": top_k})
        assert r.choices[0].message.content == expected


def test_more_sequences_than_the_queue_holds_get_400(server, http, engine_survives):
    limit = server.client(MODEL).spec.max_pending
    error = error_of(http.post(CHAT, json={**GOOD, "n": 2_000_000}), 400)
    assert error["param"] == "n" and str(limit) in error["message"]
    body = {"model": MODEL, "prompt": ["Hi"] * 4, "n": limit // 4 + 1, "max_tokens": 1}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["param"] == "n"


def test_tool_choice_without_tools_is_refused_and_none_makes_no_calls(openai_client, engine_survives):
    # tools and response_format are served now (tests/server/test_tool_calls.py, test_structured_outputs.py)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    kwargs = dict(model=MODEL, messages=GOOD["messages"], max_tokens=3)
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(**kwargs, tool_choice="required")
    assert e.value.body["param"] == "tool_choice"
    r = openai_client.chat.completions.create(**kwargs, tools=tools, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"


def test_text_response_format_is_served(openai_client):
    r = openai_client.chat.completions.create(model=MODEL, messages=GOOD["messages"], max_tokens=3,
                                              response_format={"type": "text"})
    assert r.choices[0].finish_reason == "length"
