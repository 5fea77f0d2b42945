"""An engine's weights packed into one CUDA virtual range after loading, so that sleep can give their device
memory back and wake can put them back at the same addresses: the CUDA graphs captured over them stay
valid. Every tensor keeps its identity (its `.data` points into the range), so the modules, and the layers
sharing one rotary table or a tied embedding, see the move."""
import logging

import torch

from corral.engine.virtual_memory import VirtualRange

logger = logging.getLogger(__name__)

ALIGNMENT = 256  # bytes, as torch's allocator aligns
EMPTY_CACHE_EVERY = 256 * 2**20  # bytes moved between handing the old copies back to the device
PAGE_BYTES = EMPTY_CACHE_EVERY  # large pages (few driver calls at sleep and wake); the move maps one page ahead
HOST_CHUNK = 256 * 2**20  # pinned host memory comes in powers of two: in chunks, a copy wastes little


class VirtualWeights:
    def __init__(self, driver, tensors: list[torch.Tensor]):
        """Moves `tensors` (each once: shared tensors are one object) into a range of their total size. The
        old copies go back to the device as the move goes, so it needs little more than the weights (a page and
        what was moved since the last handing back)."""
        tensors = [t for t in tensors if t.numel() > 0]
        offsets, end = [], 0
        for t in tensors:
            offsets.append(end)
            end += -(-t.numel() * t.element_size() // ALIGNMENT) * ALIGNMENT
        self.num_bytes = end
        self.range = VirtualRange(driver, max(end, 1), PAGE_BYTES)
        self.bytes: torch.Tensor | None = None  # the range as uint8, once its first page is mapped
        moved = 0
        with torch.no_grad():
            for t, offset in zip(tensors, offsets):
                size = t.numel() * t.element_size()
                self.range.map(offset, size, zero=False)
                if self.bytes is None:
                    self.bytes = self.range.tensor(self.num_bytes)
                view = self.bytes[offset:offset + size].view(t.dtype).view(t.shape)
                view.copy_(t)
                t.data = view
                moved += size
                if moved >= EMPTY_CACHE_EVERY:
                    torch.cuda.empty_cache()
                    moved = 0
        torch.cuda.empty_cache()
        logger.info("weights moved into virtual memory: %d tensors, %.2f GiB", len(tensors), end / 2**30)

    @property
    def mapped_bytes(self) -> int:
        return self.range.mapped_bytes

    def sleep(self) -> list[torch.Tensor]:
        """Copy the weights to pinned host memory and unmap their pages: that copy, in chunks."""
        host = []
        for start in range(0, self.num_bytes, HOST_CHUNK):
            chunk = torch.empty(min(HOST_CHUNK, self.num_bytes - start), dtype=torch.uint8, pin_memory=True)
            chunk.copy_(self.bytes[start:start + chunk.numel()], non_blocking=True)
            host.append(chunk)
        self.range.driver.synchronize()
        self.range.unmap_all()
        return host

    def wake(self, host: list[torch.Tensor]):
        """Map the pages back at the same addresses and copy the weights in (queued on torch's current
        stream, before any forward)."""
        self.range.map(0, self.num_bytes, zero=False)
        start = 0
        for chunk in host:
            self.bytes[start:start + chunk.numel()].copy_(chunk, non_blocking=True)
            start += chunk.numel()
