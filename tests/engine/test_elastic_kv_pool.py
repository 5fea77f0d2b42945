"""Elastic KV memory on the engine's side: the KV cache manager uses the granted share of its reserved
blocks, grows at once, and shrinks only through blocks that hold nothing (cached prefixes past the new
size evicted, blocks in use retired when their request lets go). No torch, no model."""
from corral.engine.kv_cache_manager import KVCacheManager
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


def test_demand_counts_blocks_in_use_and_what_waiting_requests_need():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    assert kv.num_needed_blocks([], [], max_num_seqs=4) == 0
    running = req("a", list(range(8)))
    admit(kv, running)
    waiting = req("b", list(range(10)))
    assert kv.num_needed_blocks([running], [waiting], max_num_seqs=4) == 2 + 1 + 3


def test_waiting_requests_past_the_sequence_cap_add_no_demand():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    running = req("a", list(range(8)))
    admit(kv, running)
    first, second = req("b", list(range(10))), req("c", list(range(20)))
    assert kv.num_needed_blocks([running], [first, second], max_num_seqs=2) == 2 + 1 + 3  # room for b only
    assert kv.num_needed_blocks([running], [first, second], max_num_seqs=1) == 2 + 1  # the batch is full
