"""Elastic KV memory: the models on one device draw KV pages from one budget instead of fixed shares. A
page is a fixed number of bytes (2 MiB, the granularity at which CUDA virtual memory maps physical memory);
each model's engine reserves a range of KV blocks and may use the blocks its granted pages cover. Each
engine reports its demand with every step; `rebalance` answers with new grants:

- a model short of blocks gets free pages;
- under pressure pages come back from models with free blocks above their minimum: idle models first,
  then busy models above what they need, then busy models above their share of the max-min fair split
  (a busy model keeps what it needs up to an equal split of the budget, and what one model does not
  need goes to the others; a busy model never drops below that share);
- a smaller budget (another model's weights are loading) takes pages back the same way, busy models
  down to their shares of it;
- a model never drops below its minimum (one sequence of max_model_len); a grant below the blocks its
  requests hold takes effect as they finish: those pages count as held, not free, until its engine says
  it freed them;
- a model that sleeps or unloads leaves, returning all its pages.

Plain arithmetic; corral.server.kv_sharing feeds it the engines' reports and sends them the grants."""
from collections import deque
from dataclasses import dataclass, field

from corral.server.memory_planner import MiB

PAGE_BYTES = 2 * MiB


@dataclass(slots=True)
class KVTenant:
    """One model's engine. `min_blocks` hold one sequence of max_model_len, `max_blocks` is its reserved
    range; `num_blocks` is what its engine holds now (its grant, or more while blocks past a smaller grant
    are still in use), `num_used_blocks` the blocks its requests hold, `num_needed_blocks` those plus what
    its requests need to go on (0: idle), `recent_needed` that demand at the last rebalances."""

    name: str
    block_bytes: int
    min_blocks: int
    max_blocks: int
    granted_pages: int = 0
    num_blocks: int = 0
    num_used_blocks: int = 0
    num_needed_blocks: int = 0
    recent_needed: deque = field(default_factory=deque)

    @property
    def busy(self) -> bool:
        """It has requests, or had some at one of the last rebalances."""
        return self.num_needed_blocks > 0 or any(self.recent_needed)


class KVPages:
    """One device's budget of KV pages and the models' grants in it. A model wants the most it needed over
    the last `hold_rounds` rebalances, and counts as busy while it needed any: the gap between one request's
    end and the next one's arrival, even with none left for a moment, does not hand its pages to a model that
    would hold them until its own requests end."""

    def __init__(self, budget_bytes: int, page_bytes: int = PAGE_BYTES, hold_rounds: int = 0):
        if page_bytes <= 0 or budget_bytes < 0:
            raise ValueError(f"a KV page budget needs page_bytes > 0 and budget_bytes >= 0, got {page_bytes} "
                             f"and {budget_bytes}")
        self.page_bytes = page_bytes
        self.budget_pages = budget_bytes // page_bytes
        self.hold_rounds = hold_rounds
        self.tenants: dict[str, KVTenant] = {}

    # page arithmetic

    def pages_for(self, tenant: KVTenant, num_blocks: int) -> int:
        return -(-num_blocks * tenant.block_bytes // self.page_bytes)

    def blocks_in(self, tenant: KVTenant, num_pages: int) -> int:
        return min(tenant.max_blocks, num_pages * self.page_bytes // tenant.block_bytes)

    def granted_blocks(self, name: str) -> int:
        tenant = self.tenants[name]
        return self.blocks_in(tenant, tenant.granted_pages)

    def held_pages(self, tenant: KVTenant) -> int:
        """Its grant, or more while its engine still holds blocks past it."""
        return max(tenant.granted_pages, self.pages_for(tenant, tenant.num_blocks))

    @property
    def free_pages(self) -> int:
        return self.budget_pages - sum(self.held_pages(t) for t in self.tenants.values())

    def min_pages(self, tenant: KVTenant) -> int:
        return self.pages_for(tenant, tenant.min_blocks)

    def max_pages(self, tenant: KVTenant) -> int:
        return max(self.min_pages(tenant), tenant.max_blocks * tenant.block_bytes // self.page_bytes)

    # membership and reports

    def set_budget(self, budget_bytes: int):
        """The pages left for KV by the weights of the models loaded now; a smaller budget is met by the
        next rebalances, as pages come back."""
        self.budget_pages = max(0, budget_bytes) // self.page_bytes

    def join(self, name: str, block_bytes: int, min_blocks: int, max_blocks: int, num_blocks: int = 0) -> int:
        """A model's engine is ready (or awake): it gets its minimum now, more as it reports demand.
        `num_blocks`: what its engine holds until the grant reaches it. Returns the grant in blocks."""
        if block_bytes <= 0 or not 0 < min_blocks <= max_blocks:
            raise ValueError(f"model {name}: a KV tenant needs block_bytes > 0 and 0 < min_blocks <= max_blocks, "
                             f"got {block_bytes}, {min_blocks} and {max_blocks}")
        tenant = KVTenant(name, block_bytes, min_blocks, max_blocks, num_blocks=num_blocks,
                          recent_needed=deque(maxlen=self.hold_rounds + 1))
        tenant.granted_pages = self.min_pages(tenant)
        self.tenants[name] = tenant
        return self.granted_blocks(name)

    def leave(self, name: str):
        """It sleeps or unloads: all its pages are free."""
        self.tenants.pop(name, None)

    def report(self, name: str, num_blocks: int, num_used_blocks: int, num_needed_blocks: int):
        tenant = self.tenants.get(name)
        if tenant is not None:
            tenant.num_blocks, tenant.num_used_blocks = num_blocks, num_used_blocks
            tenant.num_needed_blocks = num_needed_blocks

    # the policy

    def want(self, tenant: KVTenant) -> int:
        held = max(tenant.recent_needed, default=0)
        needed = self.pages_for(tenant, max(tenant.num_needed_blocks, held, tenant.min_blocks))
        return max(self.min_pages(tenant), min(needed, self.max_pages(tenant)))

    def shares(self) -> dict[str, int]:
        """The max-min fair split of the budget (water-filling): one level for every model, each model's share
        the level held between its minimum and its want, the level as high as the budget allows; the pages
        the level leaves over go one each to the models wanting more, those wanting most first. An idle
        model wants its minimum; where even the minimums overfill the budget, each gets its minimum."""
        bounds = {name: (self.min_pages(t), self.want(t)) for name, t in self.tenants.items()}
        filled = lambda level: {name: min(high, max(low, level)) for name, (low, high) in bounds.items()}
        low, high = 0, max((h for _, h in bounds.values()), default=0)
        while low < high:  # the highest level whose shares fit
            mid = (low + high + 1) // 2
            low, high = (mid, high) if sum(filled(mid).values()) <= self.budget_pages else (low, mid - 1)
        shares = filled(low)
        left = self.budget_pages - sum(shares.values())
        for name in sorted(shares, key=lambda n: -bounds[n][1]):
            if left <= 0:
                break
            if shares[name] < bounds[name][1]:
                shares[name] += 1
                left -= 1
        return shares

    def rebalance(self) -> dict[str, int]:
        """New grants, in blocks, of the models whose grant changed."""
        before = {name: t.granted_pages for name, t in self.tenants.items()}
        for tenant in self.tenants.values():
            tenant.granted_pages = max(tenant.granted_pages, self.min_pages(tenant))
            tenant.recent_needed.append(tenant.num_needed_blocks)
        shares = self.shares()
        short = [t for t in self.tenants.values() if self.want(t) > t.granted_pages]
        deficit = sum(self.want(t) - t.granted_pages for t in short) - self.free_pages
        if deficit > 0:
            idle = sorted((t for t in self.tenants.values() if not t.busy), key=lambda t: -t.granted_pages)
            deficit = self._take(idle, self.min_pages, deficit)
            busy = [t for t in self.tenants.values() if t.busy and t not in short]
            deficit = self._take(busy, lambda t: max(self.min_pages(t), self.want(t)), deficit)
            below_share = sum(max(0, min(self.want(t), shares[t.name]) - t.granted_pages) for t in short)
            owed = min(deficit, max(0, below_share - max(0, self.free_pages)))
            above_share = sorted((t for t in self.tenants.values() if t.busy),
                                 key=lambda t: shares[t.name] - t.granted_pages)
            self._take(above_share, lambda t: max(self.min_pages(t), shares[t.name]), owed)
        # a smaller budget (a model is loading) is met by busy models too, down to their shares
        over_budget = sum(t.granted_pages for t in self.tenants.values()) - self.budget_pages
        if over_budget > 0:
            above_share = sorted(self.tenants.values(), key=lambda t: shares[t.name] - t.granted_pages)
            self._take(above_share, lambda t: max(self.min_pages(t), shares[t.name]), over_budget)
        # free pages to the short, those furthest below their share first
        for tenant in sorted(short, key=lambda t: t.granted_pages / shares[t.name]):
            give = min(self.want(tenant) - tenant.granted_pages, max(0, self.free_pages))
            if give > 0:
                tenant.granted_pages += give
        return {name: self.granted_blocks(name) for name, t in self.tenants.items()
                if t.granted_pages != before[name]}

    def _take(self, tenants: list[KVTenant], keep, num_pages: int) -> int:
        """Lower grants down to `keep(tenant)`, in order, until `num_pages` are taken; what is left to take."""
        for tenant in tenants:
            if num_pages <= 0:
                break
            take = min(num_pages, tenant.granted_pages - keep(tenant))
            if take > 0:
                tenant.granted_pages -= take
                num_pages -= take
        return max(0, num_pages)
