"""Memory planning's arithmetic and messages, checked without a GPU."""
import pytest
import torch

from benchmarks.configs import CONFIGS
from corral.config import ConfigError
from corral.engine.memory import GiB, does_not_fit_message, kv_cache_budget
from corral.model_config import ModelConfig
from corral.registry.plugins import PluginManager


def test_the_kv_cache_gets_the_share_less_weights_and_activations():
    assert kv_cache_budget(80 * GiB, 70 * GiB, 0.9, 10 * GiB) == 62 * GiB


def test_the_kv_cache_takes_no_more_than_is_free():
    # another model's engine already holds most of the device
    assert kv_cache_budget(80 * GiB, 20 * GiB, 0.9, 10 * GiB) == int(20 * GiB * 0.98)


def test_a_share_smaller_than_the_model_names_both_sizes():
    with pytest.raises(ConfigError, match=r"take 10\.00 GiB of a 8\.00 GiB share \(gpu_memory_utilization 0\.1 "
                                          r"of 80\.0 GiB\)"):
        kv_cache_budget(80 * GiB, 70 * GiB, 0.1, 10 * GiB)


def test_a_full_device_says_how_much_is_free():
    with pytest.raises(ConfigError, match=r"only 0\.00 GiB of the device's 80\.0 GiB is free"):
        kv_cache_budget(80 * GiB, 0, 0.9, 10 * GiB)


@pytest.mark.parametrize("name, published", [("qwen3-0.6b", 0.596e9), ("qwen3-4b", 4.02e9), ("llama-2-7b", 6.74e9)])
def test_weight_count_matches_the_built_model_and_the_published_size(name, published):
    config = ModelConfig.from_hf(CONFIGS[name])
    model_cls = PluginManager().architectures().resolve(CONFIGS[name]["architectures"])
    with torch.device("meta"):
        model = model_cls(config)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert config.num_weight_params() == matrices
    assert config.num_weight_params() == pytest.approx(published, rel=0.01)


def test_a_model_too_large_for_its_share_names_its_size_and_the_share():
    message = does_not_fit_message("LlamaForCausalLM", ModelConfig.from_hf(CONFIGS["llama-2-7b"]), 2,
                                   24 * GiB, 0.5)
    assert message == ("LlamaForCausalLM does not fit: its weights need about 12.6 GiB, its share is "
                       "12.0 GiB (gpu_memory_utilization 0.5 of 24.0 GiB)")
