"""CUDA virtual memory: a device address range reserved once, whose physical pages are mapped and unmapped
by offset while the addresses stay the same, so tensors over the range, and CUDA graphs that captured them,
stay valid. kvcached's design for KV memory shared between engines, and the ground of sleeping without
recapturing graphs. A page is a multiple of the allocation granularity (2 MiB on current GPUs): that
granularity where memory grows and shrinks by pages (elastic KV), large where a range is mapped and
unmapped whole (each driver call costs tens of microseconds, whatever its size).

The driver calls go through `CudaDriver`, a thin adapter over cuda-python's bindings
(cuda.bindings.driver), so that tests can give `VirtualRange` a driver of their own."""
import logging
import weakref
from collections.abc import Iterable

logger = logging.getLogger(__name__)


class CudaDriverError(RuntimeError):
    """A driver call failed: which call, and the CUresult it returned."""

    def __init__(self, call: str, name: str, code: int):
        super().__init__(f"{call} failed: {name} ({code})")
        self.call, self.name, self.code = call, name, code


def available(device) -> bool:
    """Whether `device` (a torch device) can hold virtual ranges: a CUDA device whose driver supports
    virtual memory management, with cuda-python's bindings installed (the `gpu` extra)."""
    if device.type != "cuda":
        return False
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError:
        return False
    try:
        return CudaDriver(device).supports_virtual_memory()
    except Exception as e:  # a driver without the calls, or one the bindings cannot load
        logger.warning("CUDA virtual memory is unavailable: %s", e)
        return False


class CudaDriver:
    """The calls a VirtualRange makes, on one device. Torch must have initialised CUDA on `device` first:
    the driver calls run in its primary context."""

    def __init__(self, device):
        import torch
        from cuda.bindings import driver
        self._driver, self._torch = driver, torch
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.init()
        torch.cuda.set_device(self.device)
        torch.zeros(1, device=self.device)  # makes torch's primary context current in this thread
        self._check("cuInit", driver.cuInit(0))
        prop = driver.CUmemAllocationProp()
        prop.type = driver.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = driver.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = self.device.index
        prop.requestedHandleTypes = driver.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_NONE
        self._prop = prop
        access = driver.CUmemAccessDesc()
        access.location.type = driver.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        access.location.id = self.device.index
        access.flags = driver.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self._access = access

    def supports_virtual_memory(self) -> bool:
        d = self._driver
        device = self._check("cuDeviceGet", d.cuDeviceGet(self.device.index))
        attribute = d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        return bool(self._check("cuDeviceGetAttribute", d.cuDeviceGetAttribute(attribute, device)))

    def granularity(self) -> int:
        d = self._driver
        return int(self._check("cuMemGetAllocationGranularity", d.cuMemGetAllocationGranularity(
            self._prop, d.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM)))

    def reserve(self, size: int, alignment: int) -> int:
        return int(self._check("cuMemAddressReserve", self._driver.cuMemAddressReserve(size, alignment, 0, 0)))

    def free_address(self, address: int, size: int):
        self._check("cuMemAddressFree", self._driver.cuMemAddressFree(address, size))

    def create(self, size: int):
        """A physical allocation of `size` bytes on the device: its handle."""
        return self._check("cuMemCreate", self._driver.cuMemCreate(size, self._prop, 0))

    def map(self, address: int, size: int, handle):
        """Map `handle` at `address` and let this device read and write it."""
        self._check("cuMemMap", self._driver.cuMemMap(address, size, 0, handle, 0))
        self._check("cuMemSetAccess", self._driver.cuMemSetAccess(address, size, [self._access], 1))

    def unmap(self, address: int, size: int):
        self._check("cuMemUnmap", self._driver.cuMemUnmap(address, size))

    def release(self, handle):
        self._check("cuMemRelease", self._driver.cuMemRelease(handle))

    def zero(self, address: int, size: int):
        """Zero the bytes in torch's current stream, so that they are zero for every kernel launched after."""
        stream = self._torch.cuda.current_stream(self.device).cuda_stream
        self._check("cuMemsetD8Async", self._driver.cuMemsetD8Async(address, 0, size, self._driver.CUstream(stream)))

    def synchronize(self):
        """Wait for the device: nothing launched before reads a page about to be unmapped."""
        self._torch.cuda.synchronize(self.device)

    def _check(self, call: str, result):
        return checked(self._driver, call, result)


def checked(bindings, call: str, result):
    """The value of a cuda-python call (it returns (CUresult, value...)), or its error raised as
    CudaDriverError. `bindings`: the cuda.bindings.driver module."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != bindings.CUresult.CUDA_SUCCESS:
        _, name = bindings.cuGetErrorName(error)
        raise CudaDriverError(call, name.decode() if isinstance(name, bytes) else str(name), int(error))
    return values[0] if len(values) == 1 else None


def pages_covering(offset: int, size: int, page_bytes: int) -> range:
    """The pages holding bytes [offset, offset + size)."""
    if size <= 0:
        return range(0)
    return range(offset // page_bytes, -(-(offset + size) // page_bytes))


class VirtualRange:
    """`size` bytes of device addresses, reserved at once and backed page by page. A page is one
    physical allocation of its own, so each can be unmapped and released alone; the last page may be
    shorter than the others (the range ends at the granularity past `size`)."""

    def __init__(self, driver, size: int, page_bytes: int | None = None):
        """`page_bytes`: rounded up to a multiple of the granularity and to at most the range (one page);
        None: the granularity."""
        self.driver = driver
        granularity = driver.granularity()
        self.size = -(-max(1, size) // granularity) * granularity
        page_bytes = granularity if page_bytes is None else -(-max(1, page_bytes) // granularity) * granularity
        self.page_bytes = min(page_bytes, self.size)
        self.num_pages = -(-self.size // self.page_bytes)
        self.address = driver.reserve(self.size, granularity)
        self.handles: dict[int, object] = {}  # page -> its physical allocation
        # given back when the range and every tensor over it are gone (an LLM dropped in a process that
        # goes on), or at close; a process that exits gives everything back anyway
        self._finalizer = weakref.finalize(self, _give_back_collected, driver, self.address, self.size,
                                           self.page_bytes, self.handles)
        self._finalizer.atexit = False

    @property
    def mapped_bytes(self) -> int:
        return sum(self.page_size(page) for page in self.handles)

    def page_size(self, page: int) -> int:
        return _page_size(page, self.page_bytes, self.size)

    def map_pages(self, pages: Iterable[int], zero: bool = True):
        """Back these pages, in the order given (those already mapped stay as they are); `zero`: fill the new
        ones with zeros (a kernel may read a slot nothing wrote). On a driver error the pages mapped so far
        stay mapped (and zeroed)."""
        new = []
        try:
            for page in pages:
                if page in self.handles:
                    continue
                if not 0 <= page < self.num_pages:
                    raise IndexError(f"page {page} is outside a range of {self.num_pages} pages")
                size = self.page_size(page)
                handle = self.driver.create(size)
                try:
                    self.driver.map(self.address + page * self.page_bytes, size, handle)
                except CudaDriverError:
                    self.driver.release(handle)
                    raise
                self.handles[page] = handle
                new.append(page)
        finally:
            if zero:
                for first, count in _runs(sorted(new)):  # one memset a run of pages: each is a launch
                    start = first * self.page_bytes
                    self.driver.zero(self.address + start, min(count * self.page_bytes, self.size - start))

    def unmap_pages(self, pages: Iterable[int]):
        """Give these pages' memory back to the device; their addresses stay reserved. The caller makes sure
        nothing launched still reads them (CudaDriver.synchronize)."""
        for page in sorted(set(pages) & self.handles.keys()):
            self.driver.unmap(self.address + page * self.page_bytes, self.page_size(page))
            self.driver.release(self.handles.pop(page))

    def map(self, offset: int, size: int, zero: bool = True):
        self.map_pages(pages_covering(offset, size, self.page_bytes), zero)

    def unmap_all(self):
        self.unmap_pages(list(self.handles))

    def tensor(self, size: int | None = None):
        """A uint8 torch tensor over the first `size` bytes of the range (all of it by default), sharing its
        memory; `.view(dtype)` it. The range's first page must be mapped now (torch asks the driver which
        device the address is on); pages unmapped later must not be read."""
        import torch
        return torch.as_tensor(_DeviceBytes(self, self.size if size is None else size), device=self.driver.device)

    def close(self):
        """Unmap everything and free the addresses: every tensor over the range is invalid after."""
        if self.address is not None:
            self._finalizer.detach()
            _give_back(self.driver, self.address, self.size, self.page_bytes, self.handles)
            self.address = None


def _page_size(page: int, page_bytes: int, size: int) -> int:
    return min(page_bytes, size - page * page_bytes)


def _give_back(driver, address: int, size: int, page_bytes: int, handles: dict):
    """A range's pages and addresses, back to the device, once the work launched on them is done."""
    driver.synchronize()
    for page in sorted(handles):
        driver.unmap(address + page * page_bytes, _page_size(page, page_bytes, size))
        driver.release(handles.pop(page))
    driver.free_address(address, size)


def _give_back_collected(*range_state):
    try:
        _give_back(*range_state)
    except Exception as e:  # a finalizer cannot raise: the memory stays until the process exits
        logger.warning("CUDA virtual memory of a collected range was not given back: %s", e)


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted pages as (first, count) runs of consecutive ones."""
    runs = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return runs


class _DeviceBytes:
    """The first `size` bytes of a range as the CUDA array interface describes them, for torch.as_tensor:
    the tensor keeps this object alive, and so the range, which gives its memory back only once collected."""

    def __init__(self, virtual_range: VirtualRange, size: int):
        self.virtual_range = virtual_range
        self.__cuda_array_interface__ = {"shape": (size,), "typestr": "|u1",
                                         "data": (virtual_range.address, False), "version": 2, "strides": None}
