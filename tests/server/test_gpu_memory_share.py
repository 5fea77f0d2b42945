"""On a GPU, two models served together: one whose memory share cannot hold it fails alone, with the
sizes in its error; the other answers through the openai client."""
import httpx
import pytest

from tests.server.helpers import ServerThread


@pytest.mark.gpu
def test_a_model_too_large_for_its_share_fails_alone_and_names_the_sizes(model_dirs):
    import openai

    from corral.server.config import build_config
    config = build_config([str(model_dirs["tiny-qwen3"]), str(model_dirs["tiny-llama"])],
                          served_names=["qwen", "llama"], model_defaults={"max_model_len": 512, "device": "cuda"})
    config.models[0].gpu_memory_utilization = 0.1
    config.models[1].gpu_memory_utilization = 1e-6  # about 140 KB of an 80-141 GB GPU: less than its weights
    server = ServerThread(config).start()
    try:
        models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
        assert models["qwen"]["state"] == "ready"
        error = models["llama"]["error"]
        assert models["llama"]["state"] == "error"
        assert "no room for a KV cache" in error and "GiB share (gpu_memory_utilization 1e-06" in error

        r = httpx.post(f"{server.url}/v1/completions", json={"model": "llama", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        completion = client.completions.create(model="qwen", prompt="Hello", max_tokens=4, temperature=0)
        assert completion.usage.completion_tokens == 4
    finally:
        server.stop()
