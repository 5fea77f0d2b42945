"""The gauges inference gateways read (the Gateway API Inference Extension's model-server protocol, vLLM's
names): a server whose engine runs one sequence at a time, several slow requests at once, /metrics
scraped while they run and after."""
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.server.metrics import ENGINE_GAUGES
from tests.server.helpers import ServerThread
from tests.tiny_models import build_model

MODEL = "tiny-llama"
MAX_TOKENS = 120
NUM_REQUESTS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from corral.server.config import build_config
    model_dir = build_model("llama", tmp_path_factory.mktemp("gateway") / "llama")
    config = build_config([str(model_dir)], served_names=[MODEL],
                          model_defaults={"max_num_seqs": 1, "max_model_len": 512, "kv_cache_memory_bytes": "16MiB",
                                          "device": "cpu", "num_scheduler_steps": 1})
    running = ServerThread(config).start()
    yield running
    running.stop()


def scrape(url: str) -> dict[str, dict[str, float]]:
    """metric name -> model (the model or model_name label) -> value."""
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            model = sample.labels.get("model_name", sample.labels.get("model"))
            samples.setdefault(sample.name, {})[model] = sample.value
    return samples


def gateway(samples: dict, name: str) -> float:
    return samples[name][MODEL]


def test_the_gateway_gauges_follow_the_queue_under_load(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    num_blocks = httpx.get(f"{server.url}/health").json()["models"][MODEL]["num_kv_blocks"]
    max_blocks = -(-(MAX_TOKENS + 8) // server.config.models[0].block_size)

    def slow_request(i):
        client.completions.create(model=MODEL, prompt=f"Story {i}", max_tokens=MAX_TOKENS,
                                  extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=slow_request, args=(i,)) for i in range(NUM_REQUESTS)]
    for t in threads:
        t.start()
    seen = []
    while any(t.is_alive() for t in threads):
        seen.append(scrape(server.url))
        time.sleep(0.02)
    for t in threads:
        t.join()

    waiting = [gateway(s, "vllm:num_requests_waiting") for s in seen]
    running = [gateway(s, "vllm:num_requests_running") for s in seen]
    assert max(waiting) == NUM_REQUESTS - 1, "while one runs, the others wait"
    assert set(running) <= {0, 1} and 1 in running  # max_num_seqs 1
    for s in seen:
        usage = gateway(s, "vllm:kv_cache_usage_perc")
        used_blocks = round(usage * num_blocks)
        assert 0 <= usage <= 1 and abs(usage * num_blocks - used_blocks) < 1e-6
        if gateway(s, "vllm:num_requests_running"):
            assert 1 <= used_blocks <= max_blocks, "one sequence holds the blocks of its tokens"

    idle = scrape(server.url)
    assert gateway(idle, "vllm:num_requests_waiting") == 0 and gateway(idle, "vllm:num_requests_running") == 0
    assert gateway(idle, "vllm:kv_cache_usage_perc") == 0


def test_each_gateway_gauge_carries_its_corral_gauge_s_value_by_model_name(server):
    samples = scrape(server.url)
    for _, own, name, _ in ENGINE_GAUGES:
        assert samples[own] == (samples[name] if name else samples[own])
        if name:
            assert set(samples[name]) == {MODEL}
