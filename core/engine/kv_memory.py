"""An engine's KV caches over CUDA virtual memory: each layer's cache (2, num_blocks, block_size, heads,
head_dim) is a view over a virtual range of its own, reserved for all the engine's blocks, and only the
pages holding blocks [0, n) of its K half and of its V half are backed. The kernels keep one base pointer
per layer, so CUDA graphs stay valid while the backed part grows and shrinks (elastic KV memory) or goes
away entirely (sleep).

    layer range: | K: block 0 .. num_blocks-1 | V: block 0 .. num_blocks-1 |
    backed:      | K blocks [0, n) | .......  | V blocks [0, n) | .......  |   (whole pages)

Only elastic KV needs pages of the driver's granularity (a grant grows and shrinks by 2 MiB). Otherwise each
layer's range is one page, one physical allocation of the size torch would allocate for a plain cache
tensor, so that start, sleep and wake make a few driver calls a layer rather than one a 2 MiB page (a 60 GB
cache is 30,000 such pages, about 40 us each).
"""
import logging

from corral.engine.virtual_memory import CudaDriverError, VirtualRange, pages_covering

logger = logging.getLogger(__name__)


class VirtualKVCaches:
    """The ranges of every layer, backed alike: the same pages are mapped in each."""

    def __init__(self, driver, num_layers: int, num_blocks: int, block_bytes: int, grant_blocks: int | None = None):
        """Reserves the ranges and backs blocks [0, grant_blocks) in pages of the driver's granularity
        (elastic KV), or (None) every block, each layer's range one page; `num_backed_blocks` says how many
        the device had memory for. `block_bytes`: one block of K (or of V) in one layer."""
        self.driver = driver
        self.num_blocks, self.block_bytes = num_blocks, block_bytes
        size = 2 * num_blocks * block_bytes
        self.ranges = [VirtualRange(driver, size, None if grant_blocks is not None else size)
                       for _ in range(num_layers)]
        self.num_backed_blocks = 0  # blocks [0, n) are backed in every layer (while awake)
        self.asleep = False
        self.map_blocks(num_blocks if grant_blocks is None else grant_blocks)

    @property
    def page_bytes(self) -> int:
        return self.ranges[0].page_bytes

    @property
    def mapped_bytes(self) -> int:
        return sum(r.mapped_bytes for r in self.ranges)

    def pages_for(self, num_blocks: int) -> set[int]:
        """The pages of one layer's range that blocks [0, num_blocks) of K and of V lie in."""
        size = num_blocks * self.block_bytes
        return (set(pages_covering(0, size, self.page_bytes))
                | set(pages_covering(self.num_blocks * self.block_bytes, size, self.page_bytes)))

    def tensors(self, shape: tuple, dtype) -> list:
        """Each layer's cache, a view over its whole range (block 0 must be backed)."""
        nbytes = 2 * self.num_blocks * self.block_bytes
        return [r.tensor(nbytes).view(dtype).view(shape) for r in self.ranges]

    def map_blocks(self, num_blocks: int) -> int:
        """Back blocks [0, num_blocks) (new pages zeroed) before the pool hands them out. Returns the blocks
        backed now: fewer than asked when the device ran out of memory part way (logged)."""
        num_blocks = max(0, min(num_blocks, self.num_blocks))
        if num_blocks <= self.num_backed_blocks:
            return num_blocks
        if self.asleep:  # backed at wake
            self.num_backed_blocks = num_blocks
            return num_blocks
        half = self.num_blocks * self.block_bytes
        pages = sorted(self.pages_for(num_blocks) - self.pages_for(self.num_backed_blocks),
                       key=lambda p: p * self.page_bytes - (half if (p + 1) * self.page_bytes > half else 0))
        try:
            for r in self.ranges:  # in block order, K and V alike: a failure leaves the most blocks it can backed
                r.map_pages(pages)
        except CudaDriverError as e:
            backed = self._blocks_backed_everywhere(num_blocks)
            logger.warning("elastic KV: %d of %d blocks backed, the device has no more memory for now (%s)",
                           backed, num_blocks, e)
            self.num_backed_blocks = num_blocks
            self.unmap_past(backed)  # the pages only some layers got
            self.num_backed_blocks = backed
            return backed
        self.num_backed_blocks = num_blocks
        return num_blocks

    def unmap_past(self, num_blocks: int):
        """Give back the pages that hold nothing of blocks [0, num_blocks): after the device has finished all
        it was given (a step launched ahead may still read the blocks being dropped). Block 0 stays backed:
        padded rows of a CUDA graph read it."""
        num_blocks = max(1, min(num_blocks, self.num_blocks))
        if num_blocks >= self.num_backed_blocks:
            return
        self.num_backed_blocks = num_blocks
        drop = set().union(*(r.handles for r in self.ranges)) - self.pages_for(num_blocks)
        if drop and not self.asleep:
            self.driver.synchronize()
            for r in self.ranges:
                r.unmap_pages(drop)

    def sleep(self):
        """Unmap every page; the addresses, and the number of blocks to back again at wake, stay."""
        self.driver.synchronize()
        for r in self.ranges:
            r.unmap_all()
        self.asleep = True

    def wake(self):
        """Back the blocks backed before sleep again, at the same addresses, zeroed."""
        pages = sorted(self.pages_for(self.num_backed_blocks))
        for r in self.ranges:
            r.map_pages(pages)
        self.asleep = False

    def close(self):
        for r in self.ranges:
            r.close()

    def _blocks_backed_everywhere(self, at_most: int) -> int:
        common = set.intersection(*(set(r.handles) for r in self.ranges))
        low, high = self.num_backed_blocks, at_most  # pages_for grows with the count: the largest n that fits
        while low < high:
            mid = (low + high + 1) // 2
            if self.pages_for(mid) <= common:
                low = mid
            else:
                high = mid - 1
        return low
