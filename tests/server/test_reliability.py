"""Load, disconnects and dying engines on the shared server."""
import asyncio
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.server.helpers import metric_value

MESSAGES = [{"role": "user", "content": "Tell me a story."}]


def metric(http, name: str, **labels) -> float:
    return metric_value(http.get("/metrics").text, name, **labels)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s")


def engine_state(http, model: str) -> dict:
    return http.get("/health").json()["models"][model]


@pytest.fixture
def slow_model(served_models) -> str:
    """A model slow enough on a CPU that a long request is surely still running a moment later."""
    return "smollm2" if "smollm2" in served_models else "tiny-llama"


def test_32_concurrent_requests_over_all_models_complete_and_are_counted(async_openai_client, http, served_models):
    before = {m: metric(http, "corral_requests_total", model=m, finish_reason="length") for m in served_models}

    async def one(i: int):
        model = served_models[i % len(served_models)]
        if i % 4 == 0:
            r = await async_openai_client.completions.create(model=model, prompt=f"Number {i}", max_tokens=6,
                                                             extra_body={"ignore_eos": True})
            return model, r.usage.completion_tokens
        if i % 4 == 1:
            stream = await async_openai_client.completions.create(model=model, prompt=f"Number {i}", max_tokens=6,
                                                                  stream=True, extra_body={"ignore_eos": True})
            return model, len([c async for c in stream if c.choices and c.choices[0].text is not None]) and 6
        r = await async_openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=6,
            stream=i % 4 == 3, extra_body={"ignore_eos": True})
        if i % 4 == 3:
            return model, len([c async for c in r if c.choices]) and 6
        return model, r.usage.completion_tokens

    async def run():
        return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32 and all(tokens == 6 for _, tokens in results)
    for m in served_models:
        sent = sum(1 for model, _ in results if model == m)
        after = metric(http, "corral_requests_total", model=m, finish_reason="length")
        assert after - before[m] == sent, m
        assert metric(http, "corral_generation_tokens_total", model=m) > 0
        assert metric(http, "corral_e2e_request_latency_seconds_count", model=m) >= sent
        assert metric(http, "corral_time_to_first_token_seconds_count", model=m) >= sent
    assert all(engine_state(http, m)["pending"] == 0 for m in served_models)


def test_metrics_expose_queue_depth_kv_usage_and_state_per_model(http, served_models):
    text = http.get("/metrics").text
    for m in served_models:
        for name in ("corral_num_requests_running", "corral_num_requests_waiting", "corral_num_requests_pending",
                     "corral_kv_cache_usage_ratio"):
            assert f'{name}{{model="{m}"}}' in text
        assert metric(http, "corral_model_state", model=m, state="ready") == 1.0
        assert metric(http, "corral_kv_cache_blocks", model=m) > 0


def _wait_until_idle_and_freed(http, model):
    def idle():
        s = engine_state(http, model)
        return s["pending"] == 0 and s["num_running"] == 0 and s["num_waiting"] == 0 and s["kv_cache_usage"] == 0
    wait_for(idle, timeout=30)
    assert metric(http, "corral_kv_cache_usage_ratio", model=model) == 0


def test_a_client_leaving_mid_stream_aborts_its_request_and_frees_its_blocks(server, http, slow_model):
    aborted = metric(http, "corral_requests_total", model=slow_model, finish_reason="abort")
    body = {"model": slow_model, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        state = engine_state(http, slow_model)
        assert state["num_running"] == 1 and state["kv_cache_usage"] > 0
    _wait_until_idle_and_freed(http, slow_model)
    assert metric(http, "corral_requests_total", model=slow_model, finish_reason="abort") == aborted + 1


def test_a_client_leaving_a_non_streaming_request_aborts_it(server, http, slow_model):
    aborted = metric(http, "corral_requests_total", model=slow_model, finish_reason="abort")
    body = {"model": slow_model, "messages": MESSAGES, "max_tokens": 400, "ignore_eos": True}
    headers = {"Authorization": http.headers["Authorization"]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=httpx.Timeout(10, read=1.5))
    _wait_until_idle_and_freed(http, slow_model)
    assert metric(http, "corral_requests_total", model=slow_model, finish_reason="abort") == aborted + 1


def test_a_killed_engine_fails_its_requests_with_503_restarts_and_the_others_never_notice(
        server, http, openai_client, served_models, slow_model):
    victim, others = slow_model, [m for m in served_models if m != slow_model]
    expected = openai_client.completions.create(model=victim, prompt="Hello", temperature=0, max_tokens=5)
    old_pid = server.client(victim).pid
    restarts = metric(http, "corral_engine_restarts_total", model=victim)

    failures, answered, stop = [], [], threading.Event()

    def keep_asking():  # the other models, throughout
        while not stop.is_set():
            for m in others:
                try:
                    r = openai_client.completions.create(model=m, prompt="Hi", max_tokens=3)
                    answered.append(r.usage.completion_tokens)
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    failures.append(f"{m}: {e!r}")

    in_flight: dict = {}

    def long_request():
        try:
            openai_client.completions.create(model=victim, prompt="Once", max_tokens=400,
                                             extra_body={"ignore_eos": True})
            in_flight["result"] = "completed"
        except openai.APIStatusError as e:
            in_flight["result"] = (e.status_code, e.body)

    bystander = threading.Thread(target=keep_asking)
    bystander.start()
    requester = threading.Thread(target=long_request)
    requester.start()
    try:
        wait_for(lambda: engine_state(http, victim)["num_running"] >= 1, interval=0.02)
        with http.stream("POST", "/v1/chat/completions", json={"model": victim, "messages": MESSAGES, "max_tokens": 400,
                                                              "ignore_eos": True, "stream": True}) as stream:
            lines = (line for line in stream.iter_lines() if line.startswith("data:"))
            for _ in range(3):  # the role chunk, then generated text: the request is in the engine
                next(lines)
            os.kill(old_pid, signal.SIGKILL)
            events = list(lines)
        requester.join(60)
        assert in_flight["result"][0] == 503 and in_flight["result"][1]["code"] == "engine_dead"
        assert '"code":"engine_dead"' in events[-2] and events[-1] == "data: [DONE]"

        recovered = openai_client.completions.create(model=victim, prompt="Hello", temperature=0, max_tokens=5)
        assert recovered.choices[0].text == expected.choices[0].text
        state = engine_state(http, victim)
        assert state["state"] == "ready" and server.client(victim).pid != old_pid and state["restarts"] >= 1
        assert metric(http, "corral_engine_restarts_total", model=victim) == restarts + 1
    finally:
        stop.set()
        bystander.join(60)
    assert failures == [] and len(answered) >= len(others)


@pytest.mark.parametrize("endpoint, body", [
    ("/v1/completions", {"prompt": "hello world", "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 1}),
])
def test_a_slow_tokenization_runs_off_the_event_loop(server, http, monkeypatch, endpoint, body):
    """A prompt that takes seconds to tokenize (a huge one is now refused by its length before it is
    tokenized, so the tokenizer is made slow instead); meanwhile the server answers everyone else."""
    tokenizer = server.client("tiny-qwen3").input_processor.tokenizer
    encode = tokenizer.encode

    def slow_encode(*args, **kwargs):
        time.sleep(3)
        return encode(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", slow_encode)
    result, started = {}, time.monotonic()

    def post():
        result["response"] = httpx.post(f"{server.url}{endpoint}", json={"model": "tiny-qwen3", **body},
                                        headers=http.headers, timeout=120)
        result["seconds"] = time.monotonic() - started

    poster = threading.Thread(target=post)
    poster.start()
    slowest = 0.0
    while poster.is_alive():
        start = time.monotonic()
        assert http.get("/health").status_code == 200
        slowest = max(slowest, time.monotonic() - start)
        time.sleep(0.05)
    poster.join()
    assert result["response"].status_code == 200, result["response"].text
    assert result["seconds"] > 2, "the prompt was too quick to tokenize for this test to mean anything"
    assert slowest < 1.0


def test_the_queue_bound_counts_sequences_not_requests(server, http):
    client = server.client("tiny-llama")
    saved = client.spec.max_num_seqs, client.spec.max_queue_len
    client.spec.max_num_seqs, client.spec.max_queue_len = 2, 2  # four sequences in flight at most
    client.num_pending_seqs += 1  # as if a one-sequence request were in flight
    body = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 1}
    try:
        over = http.post("/v1/completions", json={**body, "n": 4})
        fits = http.post("/v1/completions", json={**body, "n": 3})
    finally:
        client.num_pending_seqs -= 1
        client.spec.max_num_seqs, client.spec.max_queue_len = saved
    assert over.status_code == 429 and over.json()["error"]["code"] == "queue_full"
    assert "1 sequences in flight" in over.json()["error"]["message"]
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 3
    assert client.num_pending_seqs == 0
