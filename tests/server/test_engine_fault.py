"""An error inside one engine's forward pass (on a GPU a real CUDA error, a device-side assert that
poisons the process's CUDA context) fails that model's request (503, engine_dead: retry), restarts its engine, and leaves the
other model alone. The faulty model is a third-party architecture plugin, found through its entry
point like any other: a Qwen3 that indexes out of bounds when its input holds the trigger tokens."""
import json
import shutil
import time

import httpx
import pytest
import torch

from tests.server.helpers import ServerThread

TRIGGER = [5, 6, 7]  # three prompt tokens in a row; random profiling and warm-up ids do not hold them

PLUGIN = '''
from corral import hookimpl


@hookimpl
def register_architectures(register):
    register("FaultyQwen3ForCausalLM", "faulty_corral_plugin.model:FaultyQwen3ForCausalLM")
'''

MODEL = f'''
import torch

from corral.plugins.qwen3 import Qwen3ForCausalLM

A, B, C = {TRIGGER}


class FaultyQwen3ForCausalLM(Qwen3ForCausalLM):
    def forward(self, input_ids, positions, ctx):
        hit = ((input_ids[:-2] == A) & (input_ids[1:-1] == B) & (input_ids[2:] == C)).any()
        # no host sync (this also runs inside CUDA-graph capture): the index is out of bounds,
        # a device-side assert on a GPU, exactly when the trigger is there
        torch.index_select(input_ids[:1], 0, hit.long().reshape(1) << 30)
        return super().forward(input_ids, positions, ctx)
'''


@pytest.fixture
def faulty_plugin_path(tmp_path, monkeypatch):
    """An installed-looking distribution (package + dist-info with a `corral` entry point) on
    sys.path, which spawned engine processes take from this one."""
    root = tmp_path / "site"
    package = root / "faulty_corral_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN)
    (package / "model.py").write_text(MODEL)
    dist_info = root / "faulty_corral_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-corral-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[corral]\nfaulty = faulty_corral_plugin\n")
    monkeypatch.syspath_prepend(str(root))
    return root


def _faulty_model_dir(model_dirs, tmp_path):
    target = tmp_path / "faulty-qwen3"
    shutil.copytree(model_dirs["tiny-qwen3"], target)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["FaultyQwen3ForCausalLM"]
    (target / "config.json").write_text(json.dumps(config))
    return target


def _state(url: str, model: str) -> dict:
    return httpx.get(f"{url}/health").json()["models"][model]


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs a CUDA device")])])
def test_an_error_inside_one_engine_fails_its_request_restarts_it_and_spares_the_other(
        device, model_dirs, faulty_plugin_path, tmp_path):
    import openai

    from corral.server.config import build_config
    config = build_config([str(_faulty_model_dir(model_dirs, tmp_path)), str(model_dirs["tiny-llama"])],
                          served_names=["faulty", "healthy"],
                          model_defaults={"max_model_len": 256, "device": device})
    for model in config.models:
        model.gpu_memory_utilization = 0.1
    server = ServerThread(config).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        assert _state(server.url, "faulty")["state"] == "ready", "the plugin's architecture did not load"
        before = client.completions.create(model="faulty", prompt=[5, 6, 8], max_tokens=3, temperature=0)
        old_pid = server.client("faulty").pid

        with pytest.raises(openai.APIStatusError) as failed:
            client.completions.create(model="faulty", prompt=[1, *TRIGGER, 9], max_tokens=3)
        assert failed.value.status_code == 503 and failed.value.body["code"] == "engine_dead"
        assert "the engine of model faulty failed" in failed.value.body["message"]

        healthy = client.completions.create(model="healthy", prompt="Hello", max_tokens=4, temperature=0)
        assert healthy.usage.completion_tokens == 4

        deadline = time.monotonic() + 120
        while (state := _state(server.url, "faulty"))["state"] != "ready" or server.client("faulty").pid == old_pid:
            assert time.monotonic() < deadline, f"the faulty model did not come back: {state}"
            time.sleep(0.2)
        assert state["restarts"] == 1
        after = client.completions.create(model="faulty", prompt=[5, 6, 8], max_tokens=3, temperature=0)
        assert after.choices[0].text == before.choices[0].text
        assert _state(server.url, "healthy")["restarts"] == 0
    finally:
        server.stop()
