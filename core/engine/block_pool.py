from collections import OrderedDict
from dataclasses import dataclass

# A full block's identity: SHA-256 over the previous block's key and this block's token ids, so
# equal keys mean equal prefixes; no prompt can be built to collide with another's (a 64-bit hash
# could be, and a colliding request would read another user's KV).
BlockKey = bytes


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    key: BlockKey | None = None


class BlockPool:
    """Every KV block, the free queue in eviction order (least recently freed first), and the
    prefix cache: full blocks by key. A free block keeps its key until it is reused.

    Elastic KV memory: the pool reserves `num_blocks` and uses the first `capacity` of them (its
    grant). Resizing down retires the blocks past the new capacity as soon as they hold nothing:
    free ones at once (their cached prefixes evicted), those in use when their requests let go. Only
    a range of block ids is ever retired, so that whole pages of the reserved range can be unmapped."""

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True):
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[BlockKey, KVBlock] = {}
        self.enable_prefix_caching = enable_prefix_caching
        self.capacity = num_blocks
        self.retiring: set[int] = set()  # blocks past the capacity that requests still hold

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_retiring(self) -> int:
        return len(self.retiring)

    @property
    def num_blocks(self) -> int:
        """Blocks held now: the capacity, and those past it still in use."""
        return self.capacity + self.num_retiring

    @property
    def num_spanned_blocks(self) -> int:
        """Blocks [0, n) hold all the pool holds: its capacity, and the blocks past it still in use. What
        lies past them can be unmapped."""
        return max(self.capacity, max(self.retiring) + 1) if self.retiring else self.capacity

    def resize(self, num_blocks: int):
        """Use the first `num_blocks` of the reserved blocks (clamped to the reservation)."""
        num_blocks = max(0, min(num_blocks, len(self.blocks)))
        old = self.capacity
        self.capacity = num_blocks
        if num_blocks > old:
            for block in reversed(self.blocks[old:num_blocks]):
                if block.ref_cnt > 0:
                    self.retiring.discard(block.block_id)  # in use, and kept
                else:  # empty: used before cached blocks are evicted, lowest first (what a shrink can unmap)
                    self.free_queue[block.block_id] = block
                    self.free_queue.move_to_end(block.block_id, last=False)
        else:
            for block in self.blocks[num_blocks:old]:
                if block.ref_cnt > 0:
                    self.retiring.add(block.block_id)
                else:
                    del self.free_queue[block.block_id]
                    self._forget(block)

    def lookup(self, key: BlockKey) -> KVBlock | None:
        return self.cached.get(key) if self.enable_prefix_caching else None

    def take(self, n: int) -> list[KVBlock]:
        """n blocks from the front of the free queue, evicting their cached keys."""
        taken = []
        for _ in range(n):
            _, block = self.free_queue.popitem(last=False)
            self._forget(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def touch(self, blocks: list[KVBlock]):
        """Share cached blocks with one more request."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1

    def release(self, blocks: list[KVBlock]):
        """Drop one reference; blocks reaching zero join the free queue's tail in the given order (or
        retire, past the capacity)."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_id < self.capacity:
                    self.free_queue[block.block_id] = block
                else:
                    self.retiring.discard(block.block_id)
                    self._forget(block)

    def cache(self, block: KVBlock, key: BlockKey):
        if self.enable_prefix_caching and block.key is None:
            block.key = key
            self.cached.setdefault(key, block)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix, so later requests recompute them (benchmarks use this to
        start each timed run cold). Refused (False) while any block is in use."""
        if len(self.free_queue) < self.num_blocks:
            return False
        for block in self.blocks:
            block.key = None
        self.cached.clear()
        return True

    def _forget(self, block: KVBlock):
        if block.key is not None:
            if self.cached.get(block.key) is block:
                del self.cached[block.key]
            block.key = None
