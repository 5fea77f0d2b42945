"""An elastic engine (kv_grant_blocks) on the CPU: its pool starts at its initial grant of the blocks it
reserves, grows and shrinks with later grants, goes back to the initial grant when it sleeps, and answers as
an engine that holds every block does. (Which pages back the grant on a GPU: test_virtual_memory.py.)"""
import pytest

from corral import LLM, SamplingParams
from corral.config import ConfigError

NUM_KV_BLOCKS = 64
GRANT = 8  # 128 tokens: one sequence of max_model_len
PARAMS = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
PROMPTS = [[5, 6, 7], list(range(10, 60)), [(i * 7) % 200 + 3 for i in range(30)]]


def engine(model_dir, **args) -> LLM:
    return LLM(str(model_dir), device="cpu", max_model_len=128, num_kv_blocks=NUM_KV_BLOCKS, **args)


@pytest.fixture(scope="module")
def elastic(tiny_model_dirs) -> LLM:
    return engine(tiny_model_dirs["qwen3"], kv_grant_blocks=GRANT)


@pytest.fixture(scope="module")
def reference(tiny_model_dirs) -> list[list[int]]:
    """The greedy tokens of the same model with every block in its pool."""
    return [o.outputs[0].token_ids for o in engine(tiny_model_dirs["qwen3"]).generate(PROMPTS, PARAMS)]


def test_an_elastic_engine_starts_with_its_pool_at_the_initial_grant(elastic):
    core = elastic.engine.core
    stats = core.stats()
    assert core.num_blocks == NUM_KV_BLOCKS  # reserved
    assert (stats.num_kv_blocks, stats.num_free_kv_blocks) == (GRANT, GRANT)  # what it reports to the server


def test_an_elastic_engine_answers_as_one_holding_every_block(elastic, reference):
    kv = elastic.engine.core.kv_cache_manager
    assert [o.outputs[0].token_ids for o in elastic.generate(PROMPTS, PARAMS)] == reference  # 8 blocks at a time
    kv.set_grant(NUM_KV_BLOCKS)
    assert [o.outputs[0].token_ids for o in elastic.generate(PROMPTS, PARAMS)] == reference


def test_a_sleeping_elastic_engine_goes_back_to_its_initial_grant(elastic, reference):
    core = elastic.engine.core
    core.kv_cache_manager.set_grant(40)
    core.sleep()
    assert core.stats().num_kv_blocks == GRANT  # it wakes holding what the server's join counts it at
    core.wake()
    assert core.stats().num_kv_blocks == GRANT
    assert [o.outputs[0].token_ids for o in elastic.generate(PROMPTS, PARAMS)] == reference


def test_an_initial_grant_without_room_for_one_sequence_is_refused(tiny_model_dirs):
    with pytest.raises(ConfigError, match="kv_grant_blocks 7 holds 112 tokens, less than max_model_len 128"):
        engine(tiny_model_dirs["qwen3"], kv_grant_blocks=7)
    with pytest.raises(ConfigError, match="kv_grant_blocks must be >= 1, got 0"):
        engine(tiny_model_dirs["qwen3"], kv_grant_blocks=0)
