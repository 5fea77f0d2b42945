import hashlib
from array import array
from itertools import islice

from corral.engine.block_pool import BlockKey, BlockPool, KVBlock
from corral.engine.request import Request


def salt_key(cache_salt: str | None) -> BlockKey:
    """What a request's first block chains from: nothing, or its salt (vLLM's cache_salt), so that
    requests with different salts never share a cached block, and so never learn of each other's
    prompts."""
    if cache_salt is None:
        return b""
    return hashlib.sha256(b"cache_salt\0" + cache_salt.encode("utf-8", "surrogatepass")).digest()


class KVCacheManager:
    """Which KV blocks each request holds. The scheduler asks for room and gets block ids or
    None; it never sees blocks, ref counts or the prefix cache."""

    demand_lookahead = 512  # tokens past a request's own that its demand counts at most (num_needed_blocks)

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, memory=None,
                 grant_blocks: int | None = None):
        """`memory`: the KV caches' device memory when it is backed block by block
        (corral.engine.kv_memory.VirtualKVCaches: map_blocks, unmap_past), else None. `grant_blocks`: elastic
        KV, the pool starts with this many of the `num_blocks` reserved (set_grant)."""
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.memory = memory
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.req_keys: dict[str, list[BlockKey]] = {}
        self.req_block_ids: dict[str, list[int]] = {}
        self.req_num_cached: dict[str, int] = {}
        self.num_query_tokens = 0
        self.num_hit_tokens = 0
        if grant_blocks is not None:
            self.set_grant(grant_blocks)

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def usage(self) -> float:
        return 1.0 - self.pool.num_free_blocks / self.num_blocks if self.num_blocks else 1.0

    def set_grant(self, num_blocks: int):
        """Elastic KV memory: use this many of the reserved blocks from now on (BlockPool.resize). With
        `memory`, a larger grant is backed before the pool grows (as far as the device allows), and the
        pages a smaller one frees are given back as soon as the blocks on them hold nothing."""
        if self.memory is not None and num_blocks > self.pool.capacity:
            num_blocks = max(self.pool.capacity, self.memory.map_blocks(num_blocks))
        self.pool.resize(num_blocks)
        self._release_memory()

    def num_needed_blocks(self, running: list[Request], waiting, max_num_seqs: int, max_model_len: int) -> int:
        """The demand reported to the server (0: idle): the blocks in use, the blocks the running requests
        need beside them to go on, and all the blocks of the waiting requests the scheduler would admit
        next, as many as `max_num_seqs` leaves beside the running ones (blocks past that cap run nothing).
        A request needs room to its finish (max_tokens, or max_model_len), at most `demand_lookahead`
        tokens past what it has: room ahead keeps a grant from running short midway, as the pages another
        model gives back come only as its requests end, and the cap keeps a max_tokens filled in up to the
        context length from claiming it all."""
        if not running and not waiting:
            return 0
        used = self.num_blocks - self.pool.num_free_blocks
        ahead = sum(max(0, self._blocks_ahead(r, max_model_len) - len(self.req_block_ids.get(r.request_id, ())))
                    for r in running)
        admittable = islice(waiting, max(0, max_num_seqs - len(running)))
        return used + ahead + sum(self._blocks_ahead(r, max_model_len) for r in admittable)

    def _blocks_ahead(self, request: Request, max_model_len: int) -> int:
        max_tokens = request.sampling_params.max_tokens
        finish = max_model_len if max_tokens is None else min(max_model_len, request.num_prompt_tokens + max_tokens)
        tokens = min(finish, request.num_tokens + self.demand_lookahead)
        return -(-max(tokens, request.num_tokens + 1) // self.block_size)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    def block_ids(self, request_id: str) -> list[int]:
        return self.req_block_ids.get(request_id, [])

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest cached prefix of the request's full blocks. At least one token is always
        left to compute, since its logits are needed."""
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits = []
        for key in self._keys(request, max_blocks)[:max_blocks]:
            block = self.pool.lookup(key)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate(self, request: Request, num_new_tokens: int,
                 computed_blocks: list[KVBlock] | None = None) -> list[int] | None:
        """Room for num_new_tokens more tokens, or None if the pool cannot hold them.

        | computed (in cache) | new (this step) | unallocated |
        ^ num_computed_tokens ^ + num_new_tokens
        Full blocks among computed + new join the prefix cache, since their KV is written
        by the end of this step.
        """
        rid = request.request_id
        blocks = self.req_blocks.get(rid, [])
        if blocks and not computed_blocks:  # a running request: often nothing to add (decode)
            total = request.num_computed_tokens + num_new_tokens
            if (total <= len(blocks) * self.block_size
                    and min(total, request.num_tokens) // self.block_size <= self.req_num_cached.get(rid, 0)):
                return self.req_block_ids[rid]
        computed_blocks = computed_blocks or []
        num_computed = request.num_computed_tokens if blocks else len(computed_blocks) * self.block_size
        total = num_computed + num_new_tokens
        num_required = -(-total // self.block_size) - len(blocks) - len(computed_blocks)
        evictable_hits = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        if num_required > self.pool.num_free_blocks - evictable_hits:
            return None
        if not blocks:  # admitted: its prefix-cache lookup counts once, however long it waited
            self.num_query_tokens += request.num_tokens
            self.num_hit_tokens += num_computed
        self.pool.touch(computed_blocks)
        blocks = self.req_blocks.setdefault(rid, [])
        block_ids = self.req_block_ids.setdefault(rid, [])
        new_blocks = computed_blocks + (self.pool.take(num_required) if num_required > 0 else [])
        blocks.extend(new_blocks)
        block_ids.extend(b.block_id for b in new_blocks)
        num_full = min(total, request.num_tokens) // self.block_size
        num_cached = self.req_num_cached.get(rid, 0)
        if num_full > num_cached:
            keys = self._keys(request, num_full)
            for i in range(num_cached, num_full):
                self.pool.cache(blocks[i], keys[i])
            self.req_num_cached[rid] = num_full
        return block_ids

    def free(self, request: Request):
        """Release a request's blocks, tail first, so its last blocks are evicted first. A step launched ahead
        may still write them (a request that stopped or was aborted while it ran): the next owner's steps
        are launched after it on the same CUDA stream, so they run after its writes."""
        blocks = self.req_blocks.pop(request.request_id, [])
        self.req_keys.pop(request.request_id, None)
        self.req_block_ids.pop(request.request_id, None)
        self.req_num_cached.pop(request.request_id, None)
        self.pool.release(list(reversed(blocks)))
        if self.memory is not None and self.memory.num_backed_blocks > self.pool.capacity:
            self._release_memory()  # a smaller grant waited for these blocks

    def _release_memory(self):
        if self.memory is not None:
            self.memory.unmap_past(self.pool.num_spanned_blocks)

    def _keys(self, request: Request, num_blocks: int) -> list[BlockKey]:
        keys = self.req_keys.setdefault(request.request_id, [])
        tokens, size = request.all_token_ids, self.block_size
        while len(keys) < num_blocks:
            i = len(keys)
            digest = hashlib.sha256(keys[-1] if keys else salt_key(request.cache_salt))
            digest.update(array("q", tokens[i * size:(i + 1) * size]).tobytes())
            keys.append(digest.digest())
        return keys
