"""Bad input gets a clear exception naming the problem and what is allowed."""
import json
import shutil

import pytest

from corral import LLM, SamplingParams
from corral.config import ConfigError
from corral.model_loader import WeightLoadError
from corral.registry.architectures import UnknownArchitectureError
from corral.sampling_params import SamplingParamsError


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(str(tiny_model_dirs["llama"]), max_model_len=64)


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=2), "min_p"),
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=4, min_tokens=8), "min_tokens"),
    (dict(presence_penalty=3), "presence_penalty"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(logprobs=21), "logprobs"),
    (dict(stop=[""]), "stop"),
    (dict(logit_bias={5: 200}), "logit_bias"),
    (dict(logit_bias={-1: 5}), "logit_bias"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(seed=2**64), "seed"),
    (dict(seed=-(2**63) - 1), "seed"),
])
def test_invalid_sampling_params_name_the_parameter(kwargs, param):
    with pytest.raises(SamplingParamsError, match=param) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param


def test_a_prompt_over_max_model_len_is_rejected_with_both_numbers(llm):
    with pytest.raises(ValueError, match=r"70 tokens.*max_model_len is 64"):
        llm.generate([[5] * 70])


def test_an_empty_prompt_is_rejected(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]])


def test_token_ids_outside_the_vocabulary_are_rejected(llm):
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\)"):
        llm.generate([[5, 100000]])


def test_logit_bias_outside_the_vocabulary_is_rejected(llm):
    with pytest.raises(ValueError, match=r"logit_bias token ids must be in \[0, 512\)"):
        llm.generate([[5, 6]], SamplingParams(logit_bias={512: 1.0}))


def test_sampling_values_at_the_edges_of_their_types_are_served(llm):
    """A seed at either int64 bound, top_k past the vocabulary (all tokens): both once overflowed the
    sampler's int64 tensors and took the engine down."""
    params = [SamplingParams(max_tokens=3, temperature=1.0, seed=seed, top_k=top_k, ignore_eos=True)
              for seed, top_k in ((2**63 - 1, 0), (-(2**63), 2**63), (7, 10**6), (7, 0))]
    outputs = llm.generate([[5, 6, 7]] * len(params), params)
    assert all(len(o.outputs[0].token_ids) == 3 for o in outputs)
    assert outputs[2].outputs[0].token_ids == outputs[3].outputs[0].token_ids  # top_k >= vocab: no top-k
    n_at_the_bound = llm.generate([[5, 6, 7]], SamplingParams(n=2, max_tokens=3, seed=2**63 - 1, ignore_eos=True))
    assert len(n_at_the_bound[0].outputs) == 2  # the second sequence's seed wraps to -2**63


def test_the_engine_still_works_after_rejected_requests(llm):
    output = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert len(output.outputs[0].token_ids) == 4


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_an_unknown_architecture_lists_the_supported_ones(tiny_model_dirs, tmp_path):
    model = copy_model(tiny_model_dirs["llama"], tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownArchitectureError, match="MambaForCausalLM.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        LLM(str(model))


def test_a_missing_weight_file_is_named(tiny_model_dirs, tmp_path):
    model = copy_model(tiny_model_dirs["llama"], tmp_path / "m")
    (model / "model.safetensors").unlink()
    with pytest.raises(WeightLoadError, match="no \\*.safetensors"):
        LLM(str(model))


def test_a_truncated_weight_file_is_reported_as_corrupt(tiny_model_dirs, tmp_path):
    model = copy_model(tiny_model_dirs["llama"], tmp_path / "m")
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightLoadError, match="truncated or corrupt"):
        LLM(str(model))


def test_a_checkpoint_lacking_a_weight_is_rejected(tiny_model_dirs, tmp_path):
    from safetensors.torch import load_file, save_file
    model = copy_model(tiny_model_dirs["llama"], tmp_path / "m")
    weights = load_file(model / "model.safetensors")
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, model / "model.safetensors")
    with pytest.raises(WeightLoadError, match="model.layers.1.self_attn.qkv_proj.weight"):
        LLM(str(model))


def test_a_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        LLM(str(tmp_path))


@pytest.mark.parametrize("text, match", [("{not json", "config.json is not valid JSON"),
                                         ("[1, 2]", "config.json is not a JSON object")])
def test_a_config_json_that_is_not_a_json_object_is_rejected_naming_the_file(tmp_path, text, match):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=match):
        LLM(str(tmp_path))


def test_a_model_directory_without_tokenizer_files_is_rejected(tiny_model_dirs, tmp_path):
    """transformers builds an empty tokenizer from config.json's model_type alone; serving with it would
    answer every prompt with nothing."""
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dirs["qwen3"] / name, tmp_path / name)
    with pytest.raises(ValueError, match="no tokenizer files"):
        LLM(str(tmp_path))


def test_a_kv_pool_smaller_than_max_model_len_says_how_much_is_needed(tiny_model_dirs):
    with pytest.raises(ConfigError, match="less than max_model_len 1024"):
        LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=4, max_model_len=1024)


def test_a_device_this_machine_lacks_is_a_config_error(tiny_model_dirs):
    import torch
    from corral.config import EngineConfig
    with pytest.raises(ConfigError, match="not a torch device"):
        EngineConfig(str(tiny_model_dirs["llama"]), device="gpu0")
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError, match=f"device {missing}: "):
        EngineConfig(str(tiny_model_dirs["llama"]), device=missing)


def test_an_unknown_dtype_lists_the_allowed_ones(tiny_model_dirs):
    with pytest.raises(ConfigError, match="dtype must be one of"):
        LLM(str(tiny_model_dirs["llama"]), dtype="float8")


def test_weights_of_another_architecture_are_rejected_not_ignored(tiny_model_dirs, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    model = copy_model(tiny_model_dirs["llama"], tmp_path / "m")
    weights = load_file(model / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(weights, model / "model.safetensors")
    with pytest.raises(WeightLoadError, match="q_proj.bias has no place"):
        LLM(str(model))


def test_a_text_prompt_longer_than_the_context_can_hold_is_refused_before_it_is_tokenized(llm, monkeypatch):
    tokenizer = llm.get_tokenizer()
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: pytest.fail("the text was tokenized"))
    with pytest.raises(ValueError, match=r"characters, more than max_model_len 64 tokens can hold"):
        llm.generate(["word " * 100_000])
