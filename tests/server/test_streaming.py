"""Streaming as a client sees it at light load: one token per chunk at the decode rate, not bursts of
a multi-step decode group (the server runs 8 decode steps per launch by default); each chunk the JSON of its
fields in OpenAI's order; a stream's last chunk, its usage and [DONE] in one write, and in the other APIs
the last tokens with the closing events."""
import asyncio
import json

import httpx
import pytest

from tests.server.helpers import API_KEY, asgi_request


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


def written(tiny_model_dirs, path: str, body: dict) -> list[str]:
    """What a server on the tiny Llama writes for a streamed request, write by write (the ASGI body messages)."""
    from corral.server.api import create_app
    from corral.server.config import build_config
    config = build_config([str(tiny_model_dirs["llama"])], served_names=["l"],
                          model_defaults={"max_model_len": 256, "kv_cache_memory_bytes": "8MiB", "device": "cpu"})

    async def writes() -> list[str]:
        app, sent = create_app(config), []
        async with app.router.lifespan_context(app):
            async def send(message):
                if message["type"] == "http.response.body" and message.get("body"):
                    sent.append(message["body"].decode())
            await app(*asgi_request(path, json.dumps(body).encode()), send)
        return sent

    return asyncio.run(writes())


@pytest.mark.parametrize("path, fields", [("/v1/completions", {"prompt": [5, 6, 7]}),
                                          ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})])
def test_a_streams_last_chunk_its_usage_and_done_go_out_in_one_write(tiny_model_dirs, path, fields):
    """A client reading many streams at once (a load client, a gateway) wakes once at each one's end, not
    three times."""
    sent = written(tiny_model_dirs, path, {"model": "l", "max_tokens": 6, "ignore_eos": True, "stream": True,
                                           "stream_options": {"include_usage": True}, **fields})
    events = [e for w in sent for e in w.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 6 and chunks[-2]["choices"][0]["finish_reason"] == "length"
    last = [json.loads(e[6:]) for e in sent[-1].split("\n\n") if e.startswith("data: {")]
    assert last == chunks[-2:] and sent[-1].endswith("data: [DONE]\n\n")


def sse_types(write: str) -> list[str]:
    return [json.loads(e.split("data: ", 1)[1])["type"] for e in write.split("\n\n") if "data: " in e]


@pytest.mark.parametrize("path, fields, last_types", [
    ("/v1/messages", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6},
     ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]),
    ("/v1/responses", {"input": "Hi", "max_output_tokens": 6},
     ["response.output_text.delta", "response.output_text.done", "response.content_part.done",
      "response.output_item.done", "response.incomplete"]),
    ("/api/generate", {"prompt": "Hi", "options": {"num_predict": 6, "temperature": 0}}, None)])
def test_the_other_apis_send_the_last_tokens_and_the_closing_events_in_one_write(tiny_model_dirs, path, fields,
                                                                                 last_types):
    sent = written(tiny_model_dirs, path, {"model": "l", "temperature": 0, "ignore_eos": True, "stream": True,
                                           **fields})
    if last_types is None:  # Ollama's NDJSON: the last piece's line and the done line
        lines = [json.loads(x) for w in sent for x in w.splitlines()]
        last = [json.loads(x) for x in sent[-1].splitlines()]
        assert [x["done"] for x in last[-2:]] == [False, True] and last == lines[-len(last):]
        assert last[-1]["eval_count"] == 6 and last[-1]["done_reason"] == "length"
    else:
        assert sse_types(sent[-1])[-len(last_types):] == last_types  # with the whole answer if it came at once
        assert sum((sse_types(w) for w in sent), [])[-len(last_types):] == last_types
