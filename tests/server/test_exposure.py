"""What the server shows outside the API key's protection and in its errors: model names and states,
never engine pids, directories or tracebacks (the server log keeps those)."""
import httpx
import pytest

from tests.server.helpers import API_KEY, ServerThread
from tests.tiny_models import build_model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from corral.server.config import build_config
    root = tmp_path_factory.mktemp("exposure")
    config = build_config([str(build_model("llama", root / "llama")), str(root / "no-such-model")],
                          served_names=["llama", "broken"], server={"api_key": API_KEY},
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    running = ServerThread(config).start()
    yield running, str(root)
    running.stop()


def test_health_shows_states_without_pids_paths_or_error_text(server):
    running, root = server
    r = httpx.get(f"{running.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    models = r.json()["models"]
    assert models["llama"]["state"] == "ready" and models["broken"] == models["broken"] | {
        "state": "error", "failing": True}
    assert all("pid" not in m and "error" not in m for m in models.values())
    assert root not in r.text and "no-such-model" not in r.text


def test_a_model_that_failed_to_load_from_a_missing_directory_shows_its_name_not_the_directory(server):
    running, root = server
    headers = {"Authorization": f"Bearer {API_KEY}"}
    models = {m["id"]: m for m in httpx.get(f"{running.url}/v1/models", headers=headers).json()["data"]}
    assert models["broken"]["root"] == "broken" and models["llama"]["root"] == "llama"
    assert models["broken"]["error"] == "the directory of model broken does not exist"
    r = httpx.post(f"{running.url}/v1/completions", headers=headers, json={"model": "broken", "prompt": "Hi"})
    assert r.status_code == 503 and "model broken" in r.json()["error"]["message"]
    assert root not in r.text and root not in str(models)
