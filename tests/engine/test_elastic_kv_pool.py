"""Elastic KV memory on the engine's side: the KV cache manager uses the granted share of its reserved
blocks, grows at once, and shrinks only through blocks that hold nothing (cached prefixes past the new
size evicted, blocks in use retired when their request lets go). No torch, no model."""
from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.request import Request
from corral.sampling_params import SamplingParams
from tests.engine.kv_requests import admit, req


def test_a_grant_limits_the_blocks_requests_get():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    kv.set_grant(3)
    assert kv.num_blocks == 3 and kv.num_free_blocks == 3
    assert admit(kv, req("a", list(range(16)))) is None  # 4 blocks
    assert admit(kv, req("b", list(range(12)))) is not None


def test_a_larger_grant_admits_what_did_not_fit_using_empty_blocks_first():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    kv.set_grant(4)
    cached = req("a", list(range(9)))
    admit(kv, cached)
    kv.free(cached)  # its two full blocks stay cached
    kv.set_grant(10)
    assert max(admit(kv, req("b", list(range(100, 124))))) < 10  # six blocks
    again = req("c", list(range(9)))
    assert kv.get_computed_blocks(again)[1] == 8  # the cached prefix was not evicted for b


def test_shrinking_evicts_cached_blocks_past_the_new_size():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.set_grant(8)
    first = req("a", list(range(29)))  # 8 blocks, 7 full
    admit(kv, first)
    kv.free(first)
    kv.set_grant(2)
    assert kv.num_blocks == 2 and kv.num_free_blocks == 2
    _, num_cached = kv.get_computed_blocks(req("b", list(range(29))))
    assert num_cached == 8  # block ids 0 and 1 kept their prefix; the rest are gone
    assert all(block.block_id < 2 for block in kv.pool.cached.values())


def test_blocks_in_use_past_a_smaller_grant_retire_when_freed():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    running = req("a", list(range(24)))  # blocks 0-5
    admit(kv, running)
    kv.set_grant(2)
    assert kv.num_blocks == 6 and kv.num_free_blocks == 0  # held until its request lets go
    assert admit(kv, req("b", [1, 2, 3])) is None
    kv.free(running)
    assert kv.num_blocks == 2 and kv.num_free_blocks == 2
    assert kv.pool.cached and all(block.block_id < 2 for block in kv.pool.cached.values())


def test_growing_back_over_blocks_still_in_use_keeps_them():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    running = req("a", list(range(24)))
    admit(kv, running)
    kv.set_grant(2)
    kv.set_grant(8)
    assert kv.num_blocks == 8 and kv.num_free_blocks == 2
    kv.free(running)
    assert kv.num_free_blocks == 8


def test_a_grant_past_the_reservation_is_the_reservation():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.set_grant(100)
    assert kv.num_blocks == 8 and kv.num_free_blocks == 8


def to_finish(request_id: str, num_prompt: int, max_tokens: int | None) -> Request:
    return Request(request_id, list(range(num_prompt)), SamplingParams(max_tokens=max_tokens))


def test_demand_counts_blocks_in_use_and_what_requests_need_to_their_finish():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    assert kv.num_needed_blocks([], [], max_num_seqs=4, max_model_len=64) == 0
    running = to_finish("a", 8, max_tokens=8)  # 2 blocks held, 4 at its finish
    admit(kv, running)
    waiting = to_finish("b", 10, max_tokens=5)  # 15 tokens: 4 blocks
    assert kv.num_needed_blocks([running], [waiting], max_num_seqs=4, max_model_len=64) == 2 + 2 + 4


def test_a_request_without_max_tokens_needs_room_to_max_model_len():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    waiting = to_finish("a", 10, max_tokens=None)
    assert kv.num_needed_blocks([], [waiting], max_num_seqs=4, max_model_len=64) == 16
    capped = to_finish("b", 10, max_tokens=1000)
    assert kv.num_needed_blocks([], [capped], max_num_seqs=4, max_model_len=64) == 16


def test_demand_looks_ahead_at_most_so_many_tokens_past_a_requests_own():
    kv = KVCacheManager(num_blocks=4096, block_size=16)
    long = to_finish("a", 300, max_tokens=32768 - 300)  # a max_tokens filled in up to the context length
    admit(kv, long)
    held = -(-300 // 16)
    assert kv.num_needed_blocks([long], [], max_num_seqs=4, max_model_len=32768) == -(-(300 + 512) // 16)
    assert kv.num_needed_blocks([long], [], max_num_seqs=4, max_model_len=32768) - held == 32  # 512 tokens ahead


def test_waiting_requests_past_the_sequence_cap_add_no_demand():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    running = to_finish("a", 8, max_tokens=8)
    admit(kv, running)
    first, second = to_finish("b", 10, max_tokens=2), to_finish("c", 20, max_tokens=2)
    assert kv.num_needed_blocks([running], [first, second], max_num_seqs=2, max_model_len=64) == 2 + 2 + 3
    assert kv.num_needed_blocks([running], [first, second], max_num_seqs=1, max_model_len=64) == 2 + 2  # full
