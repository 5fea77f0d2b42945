"""The KV cache manager alone: no torch, no model."""
from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.request import Request
from corral.sampling_params import SamplingParams
from tests.engine.kv_requests import admit, req


def test_allocate_takes_enough_blocks_for_the_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    assert len(admit(kv, req("a", list(range(9))))) == 3
    assert kv.num_free_blocks == 5


def test_allocate_returns_none_when_the_pool_is_too_small():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    assert admit(kv, req("a", list(range(9)))) is None
    assert kv.num_free_blocks == 2


def test_decode_grows_the_table_only_at_block_boundaries():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    r = req("a", [1, 2, 3])
    admit(kv, r)
    r.append_output_tokens([4])
    assert len(kv.allocate(r, 1)) == 1
    r.num_computed_tokens += 1
    r.append_output_tokens([5])
    assert len(kv.allocate(r, 1)) == 2


def test_shared_prefix_blocks_are_shared_not_copied():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = admit(kv, req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    b_req = req("b", [1, 2, 3, 4, 5, 6, 7, 8, 10, 11])
    blocks, num_computed = kv.get_computed_blocks(b_req)
    assert num_computed == 8
    b = kv.allocate(b_req, 2, blocks)
    assert b[:2] == a[:2] and b[2] != a[2]
    assert kv.num_free_blocks == 8 - 4


def test_a_different_earlier_block_breaks_the_chain():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    admit(kv, req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    _, num_computed = kv.get_computed_blocks(req("b", [0, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert num_computed == 0


def test_a_fully_cached_prompt_still_computes_its_last_token():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    admit(kv, req("a", list(range(8))))
    _, num_computed = kv.get_computed_blocks(req("b", list(range(8))))
    assert num_computed == 4


def test_freed_blocks_stay_cached_until_reused():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = req("a", list(range(9)))
    admit(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 4
    _, num_computed = kv.get_computed_blocks(req("b", list(range(9))))
    assert num_computed == 8


def test_reset_prefix_cache_forgets_prefixes_only_when_no_block_is_in_use():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a, b = req("a", list(range(9))), req("b", list(range(100, 109)))
    admit(kv, a)
    admit(kv, b)
    kv.free(a)
    assert not kv.reset_prefix_cache()  # b still holds its blocks
    assert kv.get_computed_blocks(req("a2", list(range(9))))[1] == 8
    kv.free(b)
    assert kv.reset_prefix_cache()
    assert kv.get_computed_blocks(req("a3", list(range(9))))[1] == 0
    assert kv.num_free_blocks == 8
    admit(kv, req("c", list(range(9))))  # blocks are handed out as before
    assert kv.num_free_blocks == 5


def test_eviction_takes_least_recently_freed_blocks_first():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    old, new = req("old", [1, 1, 1, 1, 0]), req("new", [2, 2, 2, 2, 0])
    admit(kv, old)
    kv.free(old)
    admit(kv, new)
    kv.free(new)
    admit(kv, req("c", [3, 3, 3, 3, 3, 3, 3, 3, 0]))  # three blocks: evicts old's two and one of new's
    assert kv.get_computed_blocks(req("x", [1, 1, 1, 1, 0]))[1] == 0
    assert kv.get_computed_blocks(req("y", [2, 2, 2, 2, 0]))[1] == 4


def test_a_cached_free_block_hit_is_not_counted_as_free_room():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = req("a", list(range(5)))
    admit(kv, a)
    kv.free(a)
    b = req("b", list(range(13)))  # hits a's first block, needs 4 blocks in all
    blocks, _ = kv.get_computed_blocks(b)
    assert kv.allocate(b, 9, blocks) is None
    assert kv.num_free_blocks == 3


def test_free_releases_blocks_only_when_the_last_user_leaves():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a, b = req("a", list(range(9))), req("b", list(range(9)))
    admit(kv, a)
    admit(kv, b)
    kv.free(a)
    assert kv.num_free_blocks == 8 - 3  # a's private last block returns; the two shared stay with b
    kv.free(b)
    assert kv.num_free_blocks == 8


def test_prefix_caching_off_never_hits():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    admit(kv, req("a", list(range(9))))
    assert kv.get_computed_blocks(req("b", list(range(9))))[1] == 0


def test_a_prefix_that_only_hashes_like_another_never_reads_its_blocks():
    # 1 and 2**61 hash alike in Python: under a key chained by hash(), the request below would read
    # block 1 of "victim" (computed after [1, 2, 3, 4]) as if it followed [2**61, 2, 3, 4]
    kv = KVCacheManager(num_blocks=16, block_size=4)
    assert hash(1) == hash(2**61)
    admit(kv, req("first-block", [2**61, 2, 3, 4, 0]))
    victim = admit(kv, req("victim", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    blocks, num_computed = kv.get_computed_blocks(req("other", [2**61, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert num_computed == 4 and victim[1] not in [b.block_id for b in blocks]


def test_only_requests_with_the_same_cache_salt_share_cached_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    admit(kv, Request("a", prompt, SamplingParams(), cache_salt="alice"))
    hits = {salt: kv.get_computed_blocks(Request(f"q-{salt}", prompt, SamplingParams(), cache_salt=salt))[1]
            for salt in ("alice", "bob", None, "")}
    assert hits == {"alice": 8, "bob": 0, None: 0, "": 0}
    admit(kv, req("plain", prompt))
    assert kv.get_computed_blocks(req("plain-again", prompt))[1] == 8
    assert kv.get_computed_blocks(Request("b", prompt, SamplingParams(), cache_salt="bob"))[1] == 0
