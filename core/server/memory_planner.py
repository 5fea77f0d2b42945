"""How several models share one device's memory: what each needs (its footprint), what the server may
use (its budget and its cap on loaded models), and which idle models make room for one that must load:
the least recently used are put to sleep first, then unloaded, until it fits. A model in use (requests
in flight, or loading) is never chosen. Plain arithmetic on byte counts; the registry acts on the answer."""
from dataclasses import dataclass, field

KiB, MiB, GiB = 2**10, 2**20, 2**30


def format_bytes(n: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            return f"{n / unit:.2f} {name}"
    return f"{n} B"


def kv_cache_bytes(num_tokens: int, block_size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                   itemsize: int) -> int:
    """Bytes of a KV cache of whole blocks holding `num_tokens` (keys and values of every layer)."""
    num_blocks = -(-num_tokens // block_size)
    return num_blocks * block_size * 2 * num_layers * num_kv_heads * head_dim * itemsize


@dataclass(slots=True, frozen=True)
class Footprint:
    """The device memory of one model's engine: awake, all of it; asleep, only `overhead_bytes` (what an
    engine process keeps on the device while its weights are on the host and its KV cache freed)."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def describe(self) -> str:
        parts = f"weights {format_bytes(self.weights_bytes)}, KV cache {format_bytes(self.kv_cache_bytes)}"
        if self.overhead_bytes:
            parts += f", engine {format_bytes(self.overhead_bytes)}"
        return f"{format_bytes(self.total_bytes)} ({parts})"


@dataclass(slots=True)
class Resident:
    """A model whose engine holds device memory now."""

    name: str
    footprint: Footprint
    last_used: float       # monotonic seconds of its last request
    in_use: bool = False   # requests in flight, loading or waking: never evicted
    asleep: bool = False
    can_sleep: bool = True

    @property
    def device_bytes(self) -> int:
        return self.footprint.overhead_bytes if self.asleep else self.footprint.total_bytes


@dataclass(slots=True)
class Eviction:
    """What makes room: models to put to sleep and models to unload, least recently used first."""

    sleep: list[str] = field(default_factory=list)
    unload: list[str] = field(default_factory=list)


class NeverFits(Exception):
    """The model needs more than the whole budget: no eviction helps."""


class NoRoomNow(Exception):
    """Models in use hold the memory the model needs; it may fit once they are idle."""


@dataclass(slots=True)
class MemoryPlanner:
    """budget_bytes: device memory for every model's engine together (None: not counted);
    max_loaded_models: awake models at once (None: no cap); sleeping models count only their overhead."""

    budget_bytes: int | None = None
    max_loaded_models: int | None = None
    host_budget_bytes: int | None = None  # host memory for the weights of sleeping models together (None: not counted)

    def check(self, name: str, footprint: Footprint):
        """Raises NeverFits when `name` would not fit even with every other model unloaded."""
        if self.budget_bytes is not None and footprint.total_bytes > self.budget_bytes:
            raise NeverFits(f"model {name} needs {footprint.describe()}, more than the memory budget of "
                            f"{format_bytes(self.budget_bytes)} for all models; raise --memory-budget or lower "
                            f"its max_model_len or kv_cache_memory_bytes")

    def plan(self, name: str, footprint: Footprint, residents: list[Resident]) -> Eviction:
        """The fewest least recently used idle models to sleep, then unload, for `name` to become awake
        with `footprint` beside `residents` (its own entry, when asleep, is replaced). Raises NeverFits,
        or NoRoomNow naming the models in use that hold the memory."""
        self.check(name, footprint)
        others = {r.name: _Slot(r) for r in residents if r.name != name}
        eviction = Eviction()
        idle = sorted((s for s in others.values() if not s.resident.in_use), key=lambda s: s.resident.last_used)
        for slot in idle:  # sleep (or unload, when it cannot sleep) awake idle models, oldest first
            if self._fits(footprint, others.values()):
                return eviction
            if not slot.asleep:
                slot.asleep = True
                if slot.resident.can_sleep and self._host_room(slot, idle, others.values(), eviction):
                    eviction.sleep.append(slot.resident.name)
                else:
                    slot.gone = True
                    eviction.unload.append(slot.resident.name)
        for slot in idle:  # then unload sleeping ones, oldest first
            if self._fits(footprint, others.values()):
                return eviction
            if not slot.gone:
                slot.gone = True
                if slot.resident.name in eviction.sleep:
                    eviction.sleep.remove(slot.resident.name)
                eviction.unload.append(slot.resident.name)
        if self._fits(footprint, others.values()):
            return eviction
        kept = [s for s in others.values() if not s.gone]
        raise NoRoomNow(self._holders(name, footprint, [s.resident for s in kept], self._over_cap(kept)))

    def refuse_sleep(self, name: str, footprint: Footprint, residents: list[Resident]) -> str | None:
        """Why `name` may not be put to sleep by hand (its weights beside the sleeping models' would pass the
        host budget), or None. A plan unloads older sleepers instead; a request to sleep one model does not."""
        if self.host_budget_bytes is None:
            return None
        held = sum(r.footprint.weights_bytes for r in residents if r.asleep and r.name != name)
        if held + footprint.weights_bytes <= self.host_budget_bytes:
            return None
        return (f"model {name} cannot sleep: its {format_bytes(footprint.weights_bytes)} of weights beside the "
                f"{format_bytes(held)} sleeping models hold would pass sleep_memory "
                f"({format_bytes(self.host_budget_bytes)}); unload it or a sleeping model instead")

    def _host_room(self, slot: "_Slot", idle: list["_Slot"], slots, eviction: Eviction) -> bool:
        """Whether `slot`'s weights fit the host budget once it sleeps, unloading (in the plan) sleeping idle
        models used before it, oldest first, as far as that takes."""
        if self.host_budget_bytes is None:
            return True
        used = sum(s.resident.footprint.weights_bytes for s in slots if s.asleep and not s.gone and s is not slot)
        needed = slot.resident.footprint.weights_bytes
        if needed > self.host_budget_bytes:
            return False
        older = [s for s in idle[:idle.index(slot)] if s.asleep and not s.gone]
        if used - sum(s.resident.footprint.weights_bytes for s in older) + needed > self.host_budget_bytes:
            return False  # unloading every older sleeper would not make room: this one is unloaded instead
        for sleeper in older:
            if used + needed <= self.host_budget_bytes:
                break
            sleeper.gone = True
            if sleeper.resident.name in eviction.sleep:
                eviction.sleep.remove(sleeper.resident.name)
            eviction.unload.append(sleeper.resident.name)
            used -= sleeper.resident.footprint.weights_bytes
        return True

    def _over_cap(self, kept: list["_Slot"]) -> bool:
        return self.max_loaded_models is not None and sum(not s.asleep for s in kept) + 1 > self.max_loaded_models

    def _fits(self, footprint: Footprint, slots) -> bool:
        kept = [s for s in slots if not s.gone]
        if self._over_cap(kept):
            return False
        if self.budget_bytes is None:
            return True
        used = sum(s.device_bytes for s in kept)
        return used + footprint.total_bytes <= self.budget_bytes

    def _holders(self, name: str, footprint: Footprint, in_use: list[Resident], over_cap: bool) -> str:
        held = ", ".join(f"{r.name} ({format_bytes(r.device_bytes)})" for r in in_use) or "none"
        if over_cap:
            return (f"model {name} waits for a place: max_loaded_models is {self.max_loaded_models} and the "
                    f"loaded models are in use: {held}")
        return (f"model {name} needs {format_bytes(footprint.total_bytes)} of the memory budget of "
                f"{format_bytes(self.budget_bytes)}, and models with requests in flight hold the rest: {held}")

    def free_bytes(self, residents: list[Resident]) -> int | None:
        if self.budget_bytes is None:
            return None
        return self.budget_bytes - sum(r.device_bytes for r in residents)


@dataclass(slots=True)
class _Slot:
    """A resident as a plan would leave it."""

    resident: Resident
    asleep: bool = False
    gone: bool = False

    def __post_init__(self):
        self.asleep = self.resident.asleep

    @property
    def device_bytes(self) -> int:
        return self.resident.footprint.overhead_bytes if self.asleep else self.resident.footprint.total_bytes
