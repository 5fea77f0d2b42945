"""CUDA virtual memory on a GPU: KV caches and weights in virtual ranges give the tokens of plain tensors,
a smaller KV grant gives its pages back to the device (another process's cudaMemGetInfo sees them), and
sleep unmaps every page while keeping the CUDA graphs, which wake replays without recapture. An elastic
engine (kv_grant_blocks) maps 2 MiB pages and starts with its grant's; one that is not maps each layer's
cache as one allocation.

    python -m pytest -q -m gpu tests/engine/test_virtual_memory_gpu.py"""
import gc
import logging

import pytest
import torch

from corral import LLM, SamplingParams
from corral.engine import virtual_memory
from corral.engine.sleep import memory_held
from tests.tiny_models import build_model

pytestmark = pytest.mark.gpu

NUM_KV_BLOCKS = 8192  # 64 MiB of K and of V in each of 4 layers: 256 blocks a 2 MiB page
PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
PROMPTS = [[5, 6, 7], list(range(10, 300)), [(i * 7) % 500 + 3 for i in range(40)]]


def engine(model_dir, **args) -> LLM:
    return LLM(str(model_dir), device="cuda", dtype="bfloat16", max_model_len=1024, max_num_seqs=16,
               num_kv_blocks=NUM_KV_BLOCKS, **args)


def tokens(llm: LLM) -> list[list[int]]:
    """From a cold prefix cache, so that every run makes the same batches (bf16 sums depend on them)."""
    llm.engine.core.reset_prefix_cache()
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model("qwen3", tmp_path_factory.mktemp("vmm") / "qwen3", dtype=torch.bfloat16, hidden_size=512,
                       intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=64)


@pytest.fixture(scope="module")
def reference(model_dir) -> list[list[int]]:
    """The greedy tokens of the same engine over plain tensors (no virtual memory)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(virtual_memory, "available", lambda device: False)
        plain = engine(model_dir)
    assert plain.engine.core.kv_memory is None and plain.engine.core.weights_memory is None
    out = tokens(plain)
    del plain
    gc.collect()
    torch.cuda.empty_cache()
    return out


@pytest.fixture(scope="module")
def llm(model_dir):
    """Elastic, every block granted at start."""
    if not virtual_memory.available(torch.device("cuda")):
        pytest.skip("CUDA virtual memory needs cuda-python's bindings (the gpu extra)")
    return engine(model_dir, kv_grant_blocks=NUM_KV_BLOCKS)


@pytest.fixture(scope="module")
def whole(model_dir, llm):
    """Not elastic: each layer's KV range one allocation."""
    return engine(model_dir)


def test_the_virtual_kv_pool_gives_the_tokens_of_the_plain_pool(llm, reference):
    core = llm.engine.core
    assert core.kv_memory is not None and core.kv_memory.num_backed_blocks == NUM_KV_BLOCKS
    assert core.runner.graph_runner is not None  # decode steps replay graphs over the virtual ranges
    assert tokens(llm) == reference


def test_a_smaller_grant_frees_its_pages_on_the_device_and_a_larger_one_gives_the_same_tokens(llm, reference):
    core = llm.engine.core
    memory, kv = core.kv_memory, core.kv_cache_manager
    mapped, before = memory.mapped_bytes, free_bytes()
    kv.set_grant(256)  # one page of K and one of V per layer
    freed = free_bytes() - before
    assert memory.mapped_bytes == 4 * 2 * 2 * 2**20
    assert freed >= mapped - memory.mapped_bytes - 4 * 2**20  # what another process's cudaMemGetInfo sees
    assert tokens(llm) == reference  # 290 tokens of prompt, within 256 blocks of 16
    kv.set_grant(NUM_KV_BLOCKS)
    assert memory.mapped_bytes == mapped and kv.num_blocks == NUM_KV_BLOCKS
    assert tokens(llm) == reference


def test_a_grant_shrunk_under_a_running_request_frees_its_pages_when_the_request_ends(llm, reference):
    from corral.engine.request import Request
    core = llm.engine.core
    memory, kv = core.kv_memory, core.kv_cache_manager
    kv.set_grant(NUM_KV_BLOCKS)
    core.reset_prefix_cache()
    core.add_request(Request("long", PROMPTS[1], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)))
    out = core.step()  # its prompt's blocks are held now
    held = max(kv.block_ids("long")) + 1
    kv.set_grant(1)
    assert memory.num_backed_blocks >= held  # the blocks it holds stay backed
    while core.has_unfinished_requests():
        out += core.step()
    assert [t for o in out for t in o.new_token_ids] == reference[1]
    assert memory.mapped_bytes == 4 * 2 * 2 * 2**20  # then only block 0's pages
    kv.set_grant(NUM_KV_BLOCKS)


def test_sleep_and_wake_keep_the_cuda_graphs_and_give_the_same_tokens(llm, reference, caplog, monkeypatch):
    core = llm.engine.core
    graph_runner = core.runner.graph_runner
    graphs = dict(graph_runner.graphs)
    core.sleep()
    with caplog.at_level(logging.INFO, logger="corral.engine.cuda_graphs"):
        core.wake()
    assert "captured CUDA graphs" not in caplog.text
    assert core.runner.graph_runner is graph_runner and graph_runner.graphs == graphs
    replays = []
    monkeypatch.setattr(graph_runner, "run", lambda *a, run=graph_runner.run: replays.append(1) or run(*a))
    assert tokens(llm) == reference
    assert replays  # the decode steps ran the graphs captured before sleep


def test_the_weights_and_kv_device_memory_is_free_while_asleep(llm, reference):
    core = llm.engine.core
    weights, kv = core.weights_memory.mapped_bytes, core.kv_memory.mapped_bytes
    assert weights >= sum(p.numel() * p.element_size() for p in core.runner.model.parameters())
    before = free_bytes()
    core.sleep()
    assert free_bytes() - before >= weights + kv - 2 * 2**20
    held = memory_held(core)
    assert (held.weights_bytes, held.kv_cache_bytes) == (0, 0)
    core.wake()
    assert tokens(llm) == reference


def test_an_elastic_engine_maps_only_its_initial_grant_at_start(model_dir, llm, reference):
    small = engine(model_dir, kv_grant_blocks=256)
    core = small.engine.core
    assert core.kv_memory.mapped_bytes == 4 * 2 * 2 * 2**20  # one page of K and one of V a layer
    assert core.kv_cache_manager.num_blocks == 256 and core.num_blocks == NUM_KV_BLOCKS
    assert tokens(small) == reference


def test_a_cache_that_is_not_elastic_is_one_allocation_a_layer_with_the_same_tokens(whole, reference):
    core = whole.engine.core
    memory = core.kv_memory
    assert [len(r.handles) for r in memory.ranges] == [1] * 4  # 128 MiB: K and V of 8192 blocks of 8 KiB
    assert memory.mapped_bytes == 4 * 2 * NUM_KV_BLOCKS * 8192
    assert len(core.weights_memory.range.handles) == 1  # a tiny model's weights: one page of at most 256 MiB
    assert tokens(whole) == reference


def test_sleep_and_wake_of_whole_layers_free_the_memory_and_keep_the_graphs(whole, reference, caplog):
    core = whole.engine.core
    graph_runner = core.runner.graph_runner
    graphs = dict(graph_runner.graphs)
    mapped = core.weights_memory.mapped_bytes + core.kv_memory.mapped_bytes
    before = free_bytes()
    core.sleep()
    assert free_bytes() - before >= mapped - 2 * 2**20
    with caplog.at_level(logging.INFO, logger="corral.engine.cuda_graphs"):
        core.wake()
    assert "captured CUDA graphs" not in caplog.text
    assert core.runner.graph_runner is graph_runner and graph_runner.graphs == graphs
    assert [len(r.handles) for r in core.kv_memory.ranges] == [1] * 4
    assert tokens(whole) == reference
