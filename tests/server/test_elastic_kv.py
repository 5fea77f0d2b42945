"""Elastic KV memory through a real server (--kv-sharing elastic): two tiny models under one memory budget
that holds both with a little KV to spare. Each engine starts with only the grant a joining model gets; a
burst to one while the other is idle grows the busy one's KV grant past its static share; traffic to the
other then grows its grant back. Every answer equals the offline engine's."""
import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.helpers import ServerThread, reference_footprint
from tests.tiny_models import build_model

MAX_MODEL_LEN = 128
MIN_BLOCKS = MAX_MODEL_LEN // 16  # one sequence of max_model_len: what a static share holds
PAGE_BYTES = 64 << 10  # the simulated page on CPU
PROMPTS = [f"Story number {i}: once upon a time there was a little robot who" for i in range(8)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("elastic-models")
    return {"busy": build_model("qwen3", root / "a"), "other": build_model("llama", root / "b")}


def elastic_server(model_dirs: dict[str, Path], spare_bytes: int) -> ServerThread:
    """Both models under --kv-sharing elastic, in a budget of their footprints and `spare_bytes` of KV to lend."""
    from corral.server.config import build_config
    budget = sum(reference_footprint(d, MAX_MODEL_LEN) for d in model_dirs.values()) + spare_bytes
    config = build_config([str(d) for d in model_dirs.values()], served_names=list(model_dirs),
                          server={"memory_budget_bytes": budget, "kv_sharing": "elastic"},
                          model_defaults={"max_model_len": MAX_MODEL_LEN, "device": "cpu", "max_num_seqs": 8})
    return ServerThread(config).start()


@pytest.fixture(scope="module")
def server(model_dirs):
    running = elastic_server(model_dirs, 1 << 20)  # 1 MiB of KV to lend: not enough for both bursts at once
    yield running
    running.stop()


@pytest.fixture(scope="module")
def expected(model_dirs) -> dict[str, list[str]]:
    from corral import LLM, SamplingParams
    answers = {}
    for name, model_dir in model_dirs.items():
        llm = LLM(str(model_dir), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=8 << 20, device="cpu")
        outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
        answers[name] = [o.outputs[0].text for o in outputs]
    return answers


def kv_cache(http: httpx.Client, name: str) -> dict | None:
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    return models[name]["kv_cache"]


def burst(server, name: str, http: httpx.Client) -> tuple[list[str], int]:
    """Eight concurrent greedy completions; the answers, and the largest grant seen meanwhile."""
    largest, done = 0, threading.Event()

    def watch():
        nonlocal largest
        while not done.is_set():
            if (kv := kv_cache(http, name)) is not None:
                largest = max(largest, kv["granted_blocks"])
            time.sleep(0.02)

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(client.completions.create(
                model=name, prompt=p, max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
                for p in PROMPTS))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = asyncio.run(ask_all())
    finally:
        done.set()
        watcher.join()
    return [a.choices[0].text for a in answers], largest


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as h:
        yield h


def wait_for_grants(http: httpx.Client, names: list[str]):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(kv_cache(http, n) is not None for n in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"no KV grants for {names}")


def initial_grant(model_dir: Path) -> int:
    """One sequence of max_model_len in whole pages, as blocks of 16 tokens' float32 keys and values in
    every layer (from config.json)."""
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    block_bytes = 16 * 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4
    return -(-MIN_BLOCKS * block_bytes // PAGE_BYTES) * PAGE_BYTES // block_bytes


def test_each_engine_starts_with_only_the_grant_a_joining_model_gets(server, http, model_dirs):
    wait_for_grants(http, ["busy", "other"])
    for name, model_dir in model_dirs.items():
        grant = initial_grant(model_dir)
        assert server.registry.clients[name].engine_overrides["kv_grant_blocks"] == grant  # its engine's setting
        kv = kv_cache(http, name)
        assert MIN_BLOCKS <= kv["granted_blocks"] == kv["num_blocks"] == grant < kv["max_blocks"]
        deadline = time.monotonic() + 10
        while http.get("/health").json()["models"][name]["num_kv_blocks"] != grant:  # the engine's own report
            assert time.monotonic() < deadline, "the engine never reported its initial grant"
            time.sleep(0.05)


def test_a_busy_model_borrows_the_idle_ones_pages_and_gives_them_back(server, http, expected):
    wait_for_grants(http, ["busy", "other"])
    assert kv_cache(http, "busy")["granted_blocks"] < 2 * MIN_BLOCKS

    answers, busy_peak = burst(server, "busy", http)
    assert answers == expected["busy"]
    assert busy_peak > 2 * MIN_BLOCKS  # past its static share of one sequence

    answers, other_peak = burst(server, "other", http)
    assert answers == expected["other"]
    assert other_peak > 2 * MIN_BLOCKS
    busy = kv_cache(http, "busy")
    assert MIN_BLOCKS == busy["min_blocks"] <= busy["granted_blocks"] < busy_peak  # gave pages back


def test_two_models_busy_at_once_share_the_pages_and_both_answer_right(server, http, expected, model_dirs):
    wait_for_grants(http, ["busy", "other"])
    results = {}

    def run(name):
        results[name] = burst(server, name, http)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("busy", "other")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("busy", "other"):
        answers, peak = results[name]
        assert answers == expected[name]
        assert peak > initial_grant(model_dirs[name])  # each grew past its start grant beside the other
    assert server.registry.kv_sharing.pages.free_pages >= 0  # the two hold no more than the budget


@pytest.fixture(scope="module")
def tight_server(model_dirs):
    """Spare KV for 24 of `busy`'s blocks beside both minimums: it reaches a burst's 64 only while `other` sleeps."""
    running = elastic_server(model_dirs, 384 << 10)
    yield running
    running.stop()


def test_a_waking_model_starts_once_the_pages_it_counts_on_are_given_back(tight_server, expected):
    """`other` sleeps, `busy` grows into the memory it left and keeps the pages while idle; `other`'s wake
    waits until `busy` has given back what its weights and start grant need."""
    server = tight_server
    with httpx.Client(base_url=server.url, timeout=60) as http:
        wait_for_grants(http, ["busy", "other"])
        sharing, other = server.registry.kv_sharing, server.registry.clients["other"]
        assert http.post("/v1/models/other/sleep").status_code == 200
        answers, busy_peak = burst(server, "busy", http)
        awake_share = MIN_BLOCKS + 24 + 4  # what it could hold beside `other` awake, a page of slack
        assert answers == expected["busy"] and busy_peak > awake_share  # into the memory `other` left
        seen_at_wake, wake = [], other._wake

        async def watched_wake():
            seen_at_wake.append(sharing.settled)
            await wake()

        other._wake = watched_wake
        try:
            assert http.post("/v1/models/other/wake").status_code == 200
        finally:
            del other._wake
        assert seen_at_wake == [True]
        assert kv_cache(http, "busy")["num_blocks"] <= awake_share
        answers, _ = burst(server, "other", http)
        assert answers == expected["other"]


def test_elastic_sharing_needs_a_memory_budget(model_dirs):
    from corral.config import ConfigError
    from corral.server.config import build_config
    from corral.server.model_registry import ModelRegistry
    config = build_config([str(model_dirs["busy"])], server={"kv_sharing": "elastic"},
                          model_defaults={"device": "cpu"})
    with pytest.raises(ConfigError, match="--memory-budget"):
        ModelRegistry(config)
