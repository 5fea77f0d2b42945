"""kv_cache_dtype in the API process: a model's footprint counts an fp8 cache at one byte an element, and
working it out asks nothing of CUDA (the API process never starts it; the engine checks its own GPU)."""
import pytest
import torch

from corral.server.config import build_config
from corral.server.model_memory import estimate_footprint

MAX_MODEL_LEN = 256


@pytest.fixture
def gpu_without_cuda_started(monkeypatch):
    """A visible GPU whose CUDA may not be started here: torch's lazy init raises."""
    def refuse():
        raise AssertionError("the API process started CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "_lazy_init", refuse)


def spec_of(model_dir, **settings):
    config = build_config([str(model_dir)], model_defaults={"max_model_len": MAX_MODEL_LEN, "device": "cuda",
                                                            "dtype": "bfloat16", **settings})
    return config.models[0]


def test_an_fp8_cache_is_counted_at_half_of_bf16_without_starting_cuda(gpu_without_cuda_started,
                                                                       tiny_model_dirs):
    model_dir = tiny_model_dirs["llama"]
    bf16 = estimate_footprint(spec_of(model_dir), model_dir, MAX_MODEL_LEN)
    fp8 = estimate_footprint(spec_of(model_dir, kv_cache_dtype="fp8"), model_dir, MAX_MODEL_LEN)
    assert fp8.weights_bytes == bf16.weights_bytes
    assert 2 * fp8.kv_cache_bytes == bf16.kv_cache_bytes > 0
