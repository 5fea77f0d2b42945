"""--eviction unload (Ollama's policy): under a memory budget that holds two of three tiny models, the model
that makes room is unloaded (its engine process stops, it holds nothing) instead of put to sleep, and it
comes back from its files on its next request with the same greedy answer. A real server, the openai
client."""
import asyncio
import os
import time

import httpx
import openai
import pytest

from tests.server.helpers import ServerThread, reference_footprint
from tests.tiny_models import build_model

MAX_MODEL_LEN = 256
NAMES = ("tiny-a", "tiny-b", "tiny-c")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from corral.server.config import build_config
    root = tmp_path_factory.mktemp("eviction-models")
    dirs = [build_model("qwen3", root / "a"), build_model("llama", root / "b"),
            build_model("llama", root / "c", seed=1)]
    sizes = sorted(reference_footprint(d, MAX_MODEL_LEN) for d in dirs)
    budget = sizes[1] + sizes[2] + sizes[0] // 2  # any two, never three
    config = build_config([str(d) for d in dirs], served_names=list(NAMES),
                          server={"memory_budget_bytes": budget, "eviction": "unload"},
                          model_defaults={"max_model_len": MAX_MODEL_LEN, "device": "cpu", "preload": False,
                                          "max_num_seqs": 4})
    running = ServerThread(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def ask(client, model: str) -> str:
    answer = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    return answer.choices[0].text


def states(server) -> dict[str, tuple[str, int]]:
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    return {m["id"]: (m["state"], m["memory_bytes"]) for m in models}


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_third_model_unloads_the_least_recently_used_one_instead_of_putting_it_to_sleep(server, client):
    ask(client, "tiny-a")
    engine_pid = server.client("tiny-a").pid
    ask(client, "tiny-b")
    ask(client, "tiny-c")  # a is the least recently used: it makes room
    now = states(server)
    assert now["tiny-a"] == ("unloaded", 0)
    assert now["tiny-b"][0] == now["tiny-c"][0] == "ready"
    deadline = time.monotonic() + 10
    while process_exists(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_exists(engine_pid)  # a sleeping model would keep its engine process


def test_round_robin_traffic_never_puts_a_model_to_sleep_and_answers_as_before(server, client):
    first = {name: ask(client, name) for name in NAMES}
    seen = set()
    for _ in range(2):
        for name in NAMES:
            assert ask(client, name) == first[name]  # reloaded from its files, the same greedy answer
            now = states(server)
            seen |= {state for state, _ in now.values()}
            assert sum(state == "ready" for state, _ in now.values()) <= 2
    assert "sleeping" not in seen and "unloaded" in seen


def test_a_request_that_comes_while_its_model_is_being_unloaded_is_served(server, client):
    expected = ask(client, "tiny-a")

    async def unload_then_ask():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http, \
                openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120) as aclient:
            unloading = asyncio.create_task(http.post("/v1/models/tiny-a/unload"))
            while str(server.client("tiny-a").state) != "unloaded":  # its engine is still stopping
                await asyncio.sleep(0.001)
            answer = await aclient.completions.create(model="tiny-a", prompt="The capital of France is",
                                                      max_tokens=8, temperature=0)
            await unloading
            return answer.choices[0].text

    assert asyncio.run(unload_then_ask()) == expected
    assert states(server)["tiny-a"][0] == "ready"
