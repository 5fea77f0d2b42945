"""Memory planning's arithmetic and messages, checked without a GPU."""
import pytest
import torch

from benchmarks.configs import CONFIGS
from corral.config import ConfigError
from corral.engine.memory import GiB, does_not_fit_message, kv_cache_budget
from corral.model_config import ModelConfig
from corral.registry.plugins import PluginManager


def test_the_kv_cache_gets_the_share_less_weights_and_activations():
    assert kv_cache_budget(80 * GiB, 70 * GiB, 0.9, 10 * GiB, 8 * GiB) == 62 * GiB


def test_the_kv_cache_leaves_what_is_free_to_the_activations():
    # another model's engine already holds most of the device; the 2 GiB of activations come back
    assert kv_cache_budget(80 * GiB, 20 * GiB, 0.9, 10 * GiB, 8 * GiB) == int(20 * GiB * 0.98) - 2 * GiB


def test_a_share_smaller_than_the_model_names_both_sizes():
    with pytest.raises(ConfigError, match=r"take 10\.00 GiB of a 8\.00 GiB share \(gpu_memory_utilization 0\.1 "
                                          r"of 80\.0 GiB\)"):
        kv_cache_budget(80 * GiB, 70 * GiB, 0.1, 10 * GiB, 8 * GiB)


def test_a_full_device_says_how_much_is_free_and_what_the_activations_need():
    with pytest.raises(ConfigError, match=r"only 1\.00 GiB of the device's 80\.0 GiB is free after loading the "
                                          r"weights, and the activations need 2\.00 GiB"):
        kv_cache_budget(80 * GiB, 1 * GiB, 0.9, 10 * GiB, 8 * GiB)


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


def test_the_profiling_batch_is_the_largest_step_in_sequences_of_max_model_len(tiny_model_dirs):
    """max_num_batched_tokens 200 over max_model_len 64: four sequences on blocks of their own, each
    attending only to itself (the third computes what it computes alone)."""
    import dataclasses

    from corral import LLM
    from corral.engine.profiling import profiling_batch
    from corral.layers.attention import ForwardContext
    core = LLM(str(tiny_model_dirs["llama"]), device="cpu", max_model_len=64, max_num_batched_tokens=200).engine.core
    cpu, vocab = torch.device("cpu"), core.model_config.vocab_size
    input_ids, positions, metadata, num_blocks = profiling_batch(core.config, vocab, cpu)
    assert input_ids.shape[0] == 200 and metadata.seq_lens.tolist() == [64, 64, 64, 8]
    assert sorted(metadata.slot_mapping.tolist()) == sorted(set(metadata.slot_mapping.tolist()))
    assert num_blocks * core.config.block_size >= metadata.slot_mapping.max() + 1

    one = dataclasses.replace(core.config, max_num_batched_tokens=64)
    _, positions_alone, metadata_alone, _ = profiling_batch(one, vocab, cpu)
    with torch.inference_mode():
        model, backend = core.runner.model, core.runner.backend
        batched = model(input_ids, positions, ForwardContext(metadata, backend))
        alone = model(input_ids[128:192], positions_alone, ForwardContext(metadata_alone, backend))
    torch.testing.assert_close(batched[128:192], alone)
