"""Streaming as a client sees it at light load: one token per chunk at the decode rate, not bursts of
a multi-step decode group (the server runs 8 decode steps per launch by default); each chunk the JSON of its
fields in OpenAI's order."""
import json

import httpx
import pytest

from tests.server.helpers import API_KEY


def test_a_streamed_completion_arrives_one_token_per_chunk_at_light_load(server, served_models):
    # a real model writes whole characters (a random one's bytes often end inside one, held back)
    if "smollm2" not in served_models:
        pytest.skip("smollm2-135m-instruct is not available")
    body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    texts, usage = [], None
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                data = json.loads(line[6:])
                usage = data.get("usage") or usage
                texts += [c["text"] for c in data["choices"] if c["text"]]
    tokens = usage["completion_tokens"]
    assert tokens == 48
    assert len(texts) / tokens >= 0.9, f"{len(texts)} chunks for {tokens} tokens"


def test_a_chunk_is_the_json_of_its_fields_in_order_with_usage_null_until_the_last():
    import json

    from corral.server.serving import chunk_writer
    choice = {"index": 0, "text": ' "t1"\n\u00e9\u4f60\U0001f600\\', "logprobs": None, "finish_reason": None,
              "stop_reason": None}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    for include_usage in (True, False):
        chunk = chunk_writer("cmpl-1", "text_completion", 1796666952, "q\u00fcwen \"4b\"", include_usage)
        for choices, extra in (([choice], {}), ([], {"usage": usage}), ([choice], {"service_tier": None})):
            text = chunk(choices, **extra)
            assert text.startswith("data: ") and text.endswith("\n\n")
            data = json.loads(text[len("data: "):])
            expected = {"id": "cmpl-1", "object": "text_completion", "created": 1796666952,
                        "model": "q\u00fcwen \"4b\"", "choices": choices, **extra}
            if include_usage and "usage" not in extra:
                expected["usage"] = None
            assert data == expected and list(data) == list(expected)
