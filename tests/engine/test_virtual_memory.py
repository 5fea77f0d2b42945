"""CUDA virtual memory's page arithmetic, on the CPU: a fake driver records every map, unmap and
synchronize, so the tests see which pages a KV grant backs, that a shrink waits for the blocks still held,
that sleep unmaps everything and wake maps it back at the same addresses, that a cache which is not elastic
costs a few calls a layer, and how driver errors surface. The GPU tests (test_virtual_memory_gpu.py) run
the same code against the real driver."""
import enum
import gc
from types import SimpleNamespace

import pytest

from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.kv_memory import VirtualKVCaches
from corral.engine.virtual_memory import CudaDriverError, VirtualRange, _DeviceBytes, checked, pages_covering
from tests.engine.kv_requests import admit, req

PAGE = 4096


class FakeDriver:
    """CudaDriver's calls over a pretend address space; `fail_after` creates, the next one fails as a
    device out of memory does."""

    def __init__(self, fail_after: int | None = None):
        self.next_address, self.next_handle = 1 << 40, 1
        self.mapped: dict[int, int] = {}  # address -> handle
        self.live_handles: set[int] = set()
        self.zeroed: list[int] = []  # addresses of the pages zeroed
        self.log: list[tuple] = []
        self.fail_after = fail_after
        self.reserved: dict[int, int] = {}

    def granularity(self) -> int:
        return PAGE

    def reserve(self, size: int, alignment: int) -> int:
        address, self.next_address = self.next_address, self.next_address + size + PAGE
        self.reserved[address] = size
        return address

    def free_address(self, address: int, size: int):
        assert self.reserved.pop(address) == size
        self.log.append(("free", address))

    def create(self, size: int) -> int:
        assert size > 0 and size % PAGE == 0
        self.log.append(("create", size))
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise CudaDriverError("cuMemCreate", "CUDA_ERROR_OUT_OF_MEMORY", 2)
            self.fail_after -= 1
        handle, self.next_handle = self.next_handle, self.next_handle + 1
        self.live_handles.add(handle)
        return handle

    def map(self, address: int, size: int, handle: int):
        assert address % PAGE == 0 and not any(a in self.mapped for a in range(address, address + size, PAGE))
        self.mapped.update((a, handle) for a in range(address, address + size, PAGE))
        self.log.append(("map", address))

    def unmap(self, address: int, size: int):
        handle = self.mapped[address]
        for a in range(address, address + size, PAGE):
            assert self.mapped.pop(a) == handle  # an allocation is unmapped whole
        self.log.append(("unmap", address))

    def release(self, handle: int):
        self.live_handles.remove(handle)

    def zero(self, address: int, size: int):
        assert address % PAGE == 0 and size % PAGE == 0
        self.zeroed += range(address, address + size, PAGE)
        self.log.append(("zero", size // PAGE))

    def synchronize(self):
        self.log.append(("synchronize",))


def pages_of(driver: FakeDriver, r: VirtualRange) -> set[int]:
    """The granularity's pages of `r` that are mapped."""
    return {(a - r.address) // PAGE for a in driver.mapped if r.address <= a < r.address + r.size}


def calls(driver: FakeDriver, name: str) -> int:
    return sum(1 for entry in driver.log if entry[0] == name)


def kv_with_memory(num_blocks=100, block_bytes=1000, num_layers=2, grant_blocks=None, **driver_args):
    """A KV manager whose caches are backed as an elastic engine's are at start: its initial grant (by
    default every reserved block)."""
    driver = FakeDriver(**driver_args)
    grant_blocks = num_blocks if grant_blocks is None else grant_blocks
    memory = VirtualKVCaches(driver, num_layers, num_blocks, block_bytes, grant_blocks)
    return KVCacheManager(num_blocks, block_size=4, memory=memory, grant_blocks=grant_blocks), memory, driver


def test_pages_covering_counts_every_page_a_byte_range_touches():
    assert list(pages_covering(0, PAGE, PAGE)) == [0]
    assert list(pages_covering(PAGE - 1, 2, PAGE)) == [0, 1]
    assert list(pages_covering(5 * PAGE, 0, PAGE)) == []


def test_a_grant_backs_the_pages_of_its_blocks_in_k_and_in_v_of_every_layer():
    kv, memory, driver = kv_with_memory()
    kv.set_grant(10)
    # K: bytes [0, 10,000) are pages 0-2; V starts at 100 blocks x 1,000 bytes: [100,000, 110,000), pages 24-26
    for r in memory.ranges:
        assert pages_of(driver, r) == {0, 1, 2, 24, 25, 26}
    assert len(driver.live_handles) == 2 * 6  # the others were released, not only unmapped
    assert memory.mapped_bytes == 2 * 6 * PAGE


def test_a_larger_grant_maps_its_new_pages_zeroed_before_the_pool_grows():
    kv, memory, driver = kv_with_memory()
    kv.set_grant(10)
    driver.zeroed.clear()
    kv.set_grant(30)
    assert kv.num_blocks == 30
    for r in memory.ranges:
        assert pages_of(driver, r) == set(range(0, 8)) | set(range(24, 32))  # [0, 30,000), [100,000, 130,000)
        new = {r.address + p * PAGE for p in (*range(3, 8), *range(27, 32))}
        assert new <= set(driver.zeroed) and not {r.address, r.address + 24 * PAGE} & set(driver.zeroed)


def test_a_grant_the_device_cannot_back_grows_the_pool_only_as_far_as_its_pages_go():
    kv, memory, driver = kv_with_memory(num_layers=1)
    kv.set_grant(10)  # pages 0-2 and 24-26
    driver.fail_after = 2  # pages 27 (V) and 3 (K) come, in block order; page 28 does not
    kv.set_grant(50)
    assert kv.num_blocks == 14  # V's pages 24-27 end at byte 114,688: blocks 0-13 (K's 0-3 hold 16)
    assert memory.num_backed_blocks == 14


def test_a_shrink_unmaps_only_past_the_highest_block_still_held():
    kv, memory, driver = kv_with_memory()
    holder = req("long", list(range(4 * 60)))  # blocks 0-59
    assert max(admit(kv, holder)) == 59
    driver.log.clear()
    kv.set_grant(10)
    assert kv.num_blocks == 60  # 10 granted, 50 retiring while in use
    for r in memory.ranges:  # pages of blocks 0-59 stay: K [0, 60,000), V [100,000, 160,000)
        assert pages_of(driver, r) == set(range(0, 15)) | set(range(24, 40))
    kv.free(holder)
    for r in memory.ranges:
        assert pages_of(driver, r) == {0, 1, 2, 24, 25, 26}
    assert driver.log[0] == ("synchronize",) and driver.log[1][0] == "unmap"  # nothing launched still reads them


def test_a_shrink_to_nothing_keeps_block_zero_backed_for_padded_rows():
    kv, memory, driver = kv_with_memory()
    kv.set_grant(0)
    assert kv.num_blocks == 0
    for r in memory.ranges:
        assert pages_of(driver, r) == {0, 24}


def test_sleep_unmaps_every_page_and_wake_maps_them_back_at_the_same_addresses():
    kv, memory, driver = kv_with_memory()
    kv.set_grant(10)
    before = {r.address: pages_of(driver, r) for r in memory.ranges}
    memory.sleep()
    assert driver.mapped == {} and driver.live_handles == set()
    driver.zeroed.clear()
    memory.wake()
    assert {r.address: pages_of(driver, r) for r in memory.ranges} == before
    assert sorted(driver.zeroed) == sorted(a for a in driver.mapped)  # a kernel may read a slot nothing wrote
    assert [e for e in driver.log if e[0] == "zero"][-2:] == [("zero", 3), ("zero", 3)]  # a memset a run of pages
    assert driver.reserved.keys() == before.keys()  # the same reservations, never freed


def test_a_grant_while_asleep_maps_nothing_until_wake():
    kv, memory, driver = kv_with_memory()
    kv.set_grant(10)
    memory.sleep()
    kv.set_grant(30)
    assert driver.mapped == {}
    memory.wake()
    for r in memory.ranges:
        assert pages_of(driver, r) == set(range(0, 8)) | set(range(24, 32))


def test_an_elastic_cache_starts_with_only_its_initial_grant_backed_and_its_pool_there():
    kv, memory, driver = kv_with_memory(grant_blocks=10)
    for r in memory.ranges:
        assert pages_of(driver, r) == {0, 1, 2, 24, 25, 26}  # pages of the granularity: a grant moves by them
    assert calls(driver, "create") == 2 * 6 and calls(driver, "unmap") == 0  # never more mapped than granted
    assert (kv.num_blocks, kv.num_free_blocks, memory.num_backed_blocks) == (10, 10, 10)
    assert admit(kv, req("long", list(range(4 * 11)))) is None  # 11 blocks: past the grant
    kv.set_grant(30)
    assert admit(kv, req("long", list(range(4 * 11)))) is not None
    assert all(pages_of(driver, r) == set(range(0, 8)) | set(range(24, 32)) for r in memory.ranges)


def test_a_cache_that_is_not_elastic_is_one_allocation_a_layer_and_sleep_and_wake_make_that_many_calls():
    driver = FakeDriver()
    memory = VirtualKVCaches(driver, 3, num_blocks=100, block_bytes=1000)
    layer_bytes = 49 * PAGE  # K and V, 200,000 bytes, to the granularity
    assert memory.num_backed_blocks == 100 and memory.mapped_bytes == 3 * layer_bytes
    assert [e for e in driver.log if e[0] == "create"] == [("create", layer_bytes)] * 3
    assert (calls(driver, "map"), calls(driver, "zero")) == (3, 3)
    assert all(pages_of(driver, r) == set(range(49)) for r in memory.ranges)
    driver.log.clear()
    memory.sleep()
    assert driver.mapped == {} and driver.live_handles == set()
    assert (calls(driver, "unmap"), calls(driver, "synchronize")) == (3, 1)
    driver.log.clear()
    driver.zeroed.clear()
    memory.wake()
    assert [e[0] for e in driver.log] == ["create", "map", "zero"] * 3
    assert len(driver.live_handles) == 3 and sorted(driver.zeroed) == sorted(driver.mapped)


def test_a_range_of_large_pages_ends_with_a_shorter_one_at_the_granularity():
    driver = FakeDriver()
    r = VirtualRange(driver, 10 * PAGE + 1, page_bytes=4 * PAGE - 5)  # pages rounded up to the granularity
    assert (r.size, r.page_bytes, r.num_pages) == (11 * PAGE, 4 * PAGE, 3)
    r.map(0, r.size)
    assert [e for e in driver.log if e[0] == "create"] == [("create", 4 * PAGE)] * 2 + [("create", 3 * PAGE)]
    assert r.mapped_bytes == 11 * PAGE and driver.log[-1] == ("zero", 11)  # one memset for the run
    r.unmap_pages([2])
    assert r.mapped_bytes == 8 * PAGE and pages_of(driver, r) == set(range(8))
    assert VirtualRange(driver, 3 * PAGE, page_bytes=100 * PAGE).page_bytes == 3 * PAGE  # at most the range


def test_a_page_whose_map_fails_releases_its_allocation():
    class MapFails(FakeDriver):
        def map(self, address, size, handle):
            raise CudaDriverError("cuMemMap", "CUDA_ERROR_INVALID_VALUE", 1)

    driver = MapFails()
    r = VirtualRange(driver, 3 * PAGE)
    with pytest.raises(CudaDriverError, match=r"cuMemMap failed: CUDA_ERROR_INVALID_VALUE \(1\)"):
        r.map(0, PAGE)
    assert driver.live_handles == set() and r.handles == {}


def test_close_unmaps_everything_and_frees_the_addresses():
    driver = FakeDriver()
    r = VirtualRange(driver, 5 * PAGE + 1)  # rounded up to whole pages
    assert r.num_pages == 6 and r.size == 6 * PAGE
    address = r.address
    r.map(PAGE, 2 * PAGE)
    r.close()
    assert driver.mapped == {} and driver.live_handles == set() and driver.log[-1] == ("free", address)
    with pytest.raises(IndexError, match="outside a range of 6 pages"):
        VirtualRange(driver, 6 * PAGE).map_pages([6])


def test_a_range_gives_its_memory_back_once_nothing_holds_it_or_a_tensor_over_it():
    """An LLM dropped in a process that goes on: its ranges are collected and their memory given back, but
    not while a tensor over one lives (the tensor's array-interface object holds the range)."""
    driver = FakeDriver()
    r = VirtualRange(driver, 4 * PAGE)
    r.map(0, 2 * PAGE)
    held = _DeviceBytes(r, PAGE)  # what torch.as_tensor keeps alive for a tensor over the range
    del r
    gc.collect()
    assert len(driver.live_handles) == 2 and driver.reserved
    del held
    gc.collect()
    assert driver.mapped == {} and driver.live_handles == set() and driver.reserved == {}
    assert driver.log[-4:] == [("synchronize",), ("unmap", 1 << 40), ("unmap", (1 << 40) + PAGE),
                               ("free", 1 << 40)]


def test_a_driver_error_names_the_call_and_its_cuda_result():
    class CUresult(enum.IntEnum):
        CUDA_SUCCESS = 0
        CUDA_ERROR_OUT_OF_MEMORY = 2

    bindings = SimpleNamespace(CUresult=CUresult, cuGetErrorName=lambda e: (CUresult.CUDA_SUCCESS, e.name.encode()))
    assert checked(bindings, "cuMemCreate", (CUresult.CUDA_SUCCESS, 42)) == 42
    with pytest.raises(CudaDriverError, match=r"^cuMemCreate failed: CUDA_ERROR_OUT_OF_MEMORY \(2\)$") as e:
        checked(bindings, "cuMemCreate", (CUresult.CUDA_ERROR_OUT_OF_MEMORY, None))
    assert (e.value.call, e.value.code) == ("cuMemCreate", 2)


@pytest.mark.parametrize("fail", ["reserve", "create"])
def test_kv_caches_the_driver_cannot_back_fall_back_to_plain_tensors_unless_elastic(tiny_model_dirs, monkeypatch,
                                                                                      fail):
    import torch

    from corral.config import EngineConfig
    from corral.engine import virtual_memory, worker
    from corral.model_config import ModelConfig
    driver = FakeDriver(fail_after=0 if fail == "create" else None)
    if fail == "reserve":
        def refuse(size, alignment):
            raise CudaDriverError("cuMemAddressReserve", "CUDA_ERROR_INVALID_VALUE", 1)
        driver.reserve = refuse
    monkeypatch.setattr(virtual_memory, "CudaDriver", lambda device: driver)
    config = EngineConfig(str(tiny_model_dirs["qwen3"]), max_model_len=64)
    model_config = ModelConfig.from_hf(config.hf_config)
    caches, memory = worker.allocate_kv_caches(config, model_config, 16, torch.device("cpu"), virtual=True)
    assert memory is None and len(caches) == model_config.num_hidden_layers
    assert all(c.shape[1] == 16 and not c.any() for c in caches)
    assert not driver.mapped and not driver.live_handles  # what was mapped before the refusal is given back
    elastic = EngineConfig(str(tiny_model_dirs["qwen3"]), max_model_len=64, kv_grant_blocks=4)
    with pytest.raises(torch.OutOfMemoryError):
        worker.allocate_kv_caches(elastic, model_config, 16, torch.device("cpu"), virtual=True)
