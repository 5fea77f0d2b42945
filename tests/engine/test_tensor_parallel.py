"""Tensor parallelism on CPU over gloo: greedy tokens and logprobs of an engine split over 2 (and 4)
ranks equal transformers' (fp32) on tiny random models whose shapes make the split awkward, through
chunked prefill, preemption and the prefix cache; bad sizes are refused in one line; a rank that dies
ends its engine within a bounded time."""
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from corral import LLM, SamplingParams, hookimpl
from corral.config import ConfigError, EngineConfig
from corral.distributed.group import building_group
from corral.engine.worker_processes import RankFailed
from corral.plugins.qwen3 import Qwen3ForCausalLM
from tests.models.helpers import make_prompts, reference_generate
from tests.tiny_models import build_model, build_tokenizer, load_reference

NUM_NEW = 16
# chunked (12 tokens a step), preempted (14 blocks for ten prompts) and prefix-cached (a second round)
STRESSED = dict(dtype="float32", device="cpu", max_num_batched_tokens=12, num_kv_blocks=14, max_model_len=160,
                block_size=16)
EXAMPLE_PLUGIN = Path(__file__).parents[2] / "examples" / "corral-qwen2"


def tiny_qwen2(out: Path) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=509, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.2, eos_token_id=2, bos_token_id=None, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # transformers starts biases at zero; random ones are split by heads too
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def awkward_models(tmp_path_factory) -> dict[str, Path]:
    """qwen3: a vocabulary (509) neither 2 nor 4 divides; llama: one KV head for two ranks, tied
    embeddings and an odd head dim (24)."""
    root = tmp_path_factory.mktemp("tp")
    return {"qwen3": build_model("qwen3", root / "qwen3", vocab_size=509),
            "llama": build_model("llama", root / "llama", hidden_size=96, num_key_value_heads=1,
                                 tie_word_embeddings=True)}


def assert_greedy_matches_transformers(llm: LLM, model_dir: Path, prompts: list[list[int]], rounds: int = 1):
    reference = load_reference(model_dir)
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True, logprobs=1)
    for _ in range(rounds):
        outputs = llm.generate(prompts, params)
    for prompt, output in zip(prompts, outputs):
        tokens, logprobs = reference_generate(reference, prompt, NUM_NEW)
        assert output.outputs[0].token_ids == tokens
        assert [lp.logprob for lp in output.outputs[0].logprobs] == pytest.approx(logprobs, abs=1e-4)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_two_ranks_give_transformers_greedy_tokens_through_chunks_preemption_and_the_prefix_cache(
        awkward_models, arch):
    llm = LLM(str(awkward_models[arch]), tensor_parallel_size=2, **STRESSED)
    assert_greedy_matches_transformers(llm, awkward_models[arch], make_prompts(shared_prefix=40), rounds=2)
    stats = llm.engine.core.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hit_tokens > 0


def test_four_ranks_replicate_two_kv_heads_and_give_transformers_greedy_tokens(awkward_models):
    llm = LLM(str(awkward_models["qwen3"]), tensor_parallel_size=4, dtype="float32", device="cpu")
    assert_greedy_matches_transformers(llm, awkward_models["qwen3"], make_prompts()[2:4])


def test_the_example_qwen2_plugin_splits_its_biased_qkv_over_two_ranks(tmp_path, monkeypatch):
    from corral.registry.plugins import PluginManager
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))  # the ranks' processes inherit it
    import corral_qwen2
    plugins = PluginManager()
    if "qwen2" not in {p.name for p in plugins.plugins()}:  # its egg-info beside it may have announced it
        plugins.register(corral_qwen2, "qwen2")
    model_dir = tiny_qwen2(tmp_path / "qwen2")
    llm = LLM(str(model_dir), plugin_manager=plugins, tensor_parallel_size=2, dtype="float32", device="cpu")
    assert_greedy_matches_transformers(llm, model_dir, make_prompts()[:4])


def test_each_rank_holds_its_share_of_the_kv_heads(awkward_models):
    core = LLM(str(awkward_models["qwen3"]), tensor_parallel_size=2, dtype="float32", device="cpu",
               max_model_len=64).engine.core
    single = LLM(str(awkward_models["qwen3"]), dtype="float32", device="cpu", max_model_len=64).engine.core
    assert core.runner.model.model.layers[0].self_attn.attn.kv_cache.shape[3] == 1  # of two KV heads
    assert core.num_blocks == 2 * single.num_blocks  # the same 1 GiB a rank holds twice the tokens


@pytest.mark.parametrize("size, message", [
    (3, r"tensor_parallel_size 3 does not divide this model: 4 attention heads, 2 KV heads, "
        r"intermediate_size 128; use one of 1, 2, 4"),
    (0, r"tensor_parallel_size must be >= 1, got 0"),
])
def test_a_size_the_model_cannot_be_split_by_is_refused_naming_the_numbers(awkward_models, size, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig(model=str(awkward_models["qwen3"]), device="cpu", tensor_parallel_size=size)


def test_more_ranks_than_cuda_devices_is_refused_naming_both(awkward_models, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^tensor_parallel_size 4 needs 4 CUDA devices from cuda; 2 are visible$"):
        EngineConfig(model=str(awkward_models["qwen3"]), device="cuda", tensor_parallel_size=4)


class FailsOnRankOne(Qwen3ForCausalLM):
    """A model whose rank 1 cannot be built (a fault of that rank alone, as a device error would be)."""

    def __init__(self, config):
        if building_group().rank == 1:
            raise RuntimeError("rank 1 cannot build this model")
        super().__init__(config)


class FailingPlugin:
    @hookimpl
    def register_architectures(self, register):
        register("FailsOnRankOne", f"{__name__}:FailsOnRankOne")


def test_a_rank_that_fails_to_start_fails_the_engine_with_its_reason(awkward_models, tmp_path):
    from corral.registry.plugins import PluginManager
    model_dir = shutil.copytree(awkward_models["qwen3"], tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": ["FailsOnRankOne"]}))
    plugins = PluginManager()
    plugins.register(FailingPlugin(), "fails-on-rank-one")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^tensor-parallel rank 1 failed: RuntimeError: rank 1 cannot build "
                                          r"this model$"):
        LLM(str(model_dir), plugin_manager=plugins, tensor_parallel_size=2, dtype="float32", device="cpu")
    assert time.monotonic() - start < 30


def test_a_killed_rank_ends_the_engine_within_seconds_with_a_clear_error(awkward_models):
    llm = LLM(str(awkward_models["qwen3"]), tensor_parallel_size=2, dtype="float32", device="cpu")
    failures = []
    llm.engine.core.workers.serve(failures.append)
    worker = llm.engine.core.workers.processes[0]
    os.kill(worker.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(RankFailed, match=r"^tensor-parallel rank 1 died \(exit code -9\)$"):
        llm.generate([[5, 6, 7]], SamplingParams(max_tokens=64, ignore_eos=True))
    assert time.monotonic() - start < 10
    deadline = time.monotonic() + 10
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures == ["tensor-parallel rank 1 died (exit code -9)"]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_give_the_greedy_tokens_of_one(awkward_models):
    """bf16 on the GPU kernels and NCCL, CUDA graphs captured on each rank: TP=2 equals TP=1 token for
    token on random tiny weights (the same arithmetic split differently; logits agree closely)."""
    prompts = make_prompts()
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True)
    model = str(awkward_models["qwen3"])
    one = LLM(model, dtype="float32", device="cuda").generate(prompts, params)
    two = LLM(model, dtype="float32", device="cuda", tensor_parallel_size=2).generate(prompts, params)
    assert [o.outputs[0].token_ids for o in two] == [o.outputs[0].token_ids for o in one]


class Loopback:
    """A group whose broadcasts hand what one rank sent to the next receive, in order."""

    def __init__(self):
        self.sent, self.receiving = [], False

    def broadcast(self, x: torch.Tensor, on_cpu: bool = False) -> torch.Tensor:
        if self.receiving:
            x.copy_(self.sent.pop(0))
        else:
            self.sent.append(x.clone())
        return x


@pytest.mark.parametrize("num_tokens", [5, 6])
def test_a_worker_rank_receives_each_step_input_as_sent_with_the_kernels_pointers_aligned(num_tokens):
    from corral.distributed.step_broadcast import StepBroadcast
    from corral.engine.profiling import step_batch
    positions, metadata, _ = step_batch([1, num_tokens - 1], [30, num_tokens - 1], 16, torch.device("cpu"), 1)
    input_ids = torch.arange(100, 100 + num_tokens)
    group = Loopback()
    StepBroadcast(group, torch.device("cpu")).send(input_ids, positions, metadata, torch.tensor([0, num_tokens - 1]))
    group.receiving = True
    ids, pos, received, rows = StepBroadcast(group, torch.device("cpu")).receive()
    assert ids.tolist() == input_ids.tolist() and pos.tolist() == positions.tolist()
    assert rows.tolist() == [0, num_tokens - 1]
    assert received.slot_mapping.tolist() == metadata.slot_mapping.tolist()
    assert received.block_tables.tolist() == metadata.block_tables.tolist() and received.num_decodes == 1
    # read in place by Triton (rotary, the KV store), which compiles a variant per 16-byte alignment
    assert pos.data_ptr() % 16 == 0 and received.slot_mapping.data_ptr() % 16 == 0
