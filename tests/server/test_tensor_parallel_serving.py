"""A model split over two ranks served beside the same model on one: the openai client gets the same
greedy tokens from both; killing one rank fails the split model's in-flight request with 503, its
engine restarts and the other model is untouched. CPU ranks over gloo."""
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import ServerThread

PROMPTS = [[5, 9, 13, 17], [100, 200, 300], list(range(40, 75))]


def rank_pids(engine_pid: int) -> list[int]:
    """The engine's spawned children that run ranks (not multiprocessing's resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == engine_pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from corral.server.config import build_config
    from tests.tiny_models import build_model
    model_dir = build_model("qwen3", tmp_path_factory.mktemp("tp-serve") / "qwen3", vocab_size=509)
    path = model_dir.parent / "serve.toml"
    path.write_text(f'[models.split]\nmodel = "{model_dir}"\ntensor_parallel_size = 2\n'
                    f'[models.whole]\nmodel = "{model_dir}"\n')
    config = build_config(file=path, model_defaults={"max_model_len": 512, "device": "cpu", "dtype": "float32",
                                                     "kv_cache_memory_bytes": "16MiB"})
    server = ServerThread(config).start()
    yield server
    server.stop()


def greedy(client, model: str) -> list[str]:
    return [client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text for prompt in PROMPTS]


def test_two_ranks_serve_the_greedy_tokens_of_one(served):
    import openai
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    assert greedy(client, "split") == greedy(client, "whole")


def test_a_killed_rank_fails_the_in_flight_request_with_503_and_its_engine_restarts(served):
    import openai
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)
    expected = greedy(client, "split")
    engine_pid = served.client("split").pid
    ranks = rank_pids(engine_pid)
    assert len(ranks) == 1, ranks

    failure = {}

    def long_request():
        try:
            client.completions.create(model="split", prompt=[5, 6], max_tokens=480, temperature=0,
                                      extra_body={"ignore_eos": True})
        except openai.APIStatusError as e:
            failure["error"] = e
    request = threading.Thread(target=long_request)
    request.start()
    time.sleep(1.0)  # the request is being decoded
    os.kill(ranks[0], 9)
    killed = time.monotonic()
    request.join(30)
    assert time.monotonic() - killed < 15
    assert failure["error"].status_code == 503 and failure["error"].body["code"] == "engine_dead"

    deadline = time.monotonic() + 120
    while (state := httpx.get(f"{served.url}/health").json()["models"]["split"])["state"] != "ready" \
            or served.client("split").pid in (None, engine_pid):
        assert time.monotonic() < deadline, f"the split model did not come back: {state}"
        time.sleep(0.2)
    assert state["restarts"] == 1
    assert greedy(client, "split") == expected
    assert httpx.get(f"{served.url}/health").json()["models"]["whole"]["restarts"] == 0
