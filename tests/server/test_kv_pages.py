"""The elastic KV page-granting policy (corral.server.kv_pages), plain Python: grants grow with demand,
come back under pressure (idle models first, busy ones never below their share of a max-min fair split,
nobody below its minimum or the blocks its requests hold), and all of a model's pages come back when it
sleeps."""
import pytest

from corral.server.kv_pages import KVPages

PAGE = 4  # bytes: a page holds 4 blocks of 1 byte, or 2 of 2 bytes


def engines_follow(pages: KVPages):
    """What engines do with their grants: each shrinks to its grant, except blocks its requests hold; then
    requests finish and others take what they need of the blocks it has."""
    for tenant in pages.tenants.values():
        tenant.num_blocks = max(pages.granted_blocks(tenant.name), tenant.num_used_blocks)
        tenant.num_used_blocks = min(tenant.num_needed_blocks, pages.granted_blocks(tenant.name))


def settle(pages: KVPages, rounds: int = 4):
    for _ in range(rounds):
        pages.rebalance()
        engines_follow(pages)


def budget_of(num_pages: int, **tenants) -> KVPages:
    pages = KVPages(num_pages * PAGE, page_bytes=PAGE)
    for name, (min_blocks, max_blocks) in tenants.items():
        pages.join(name, 1, min_blocks, max_blocks)
    engines_follow(pages)
    return pages


def demand(pages: KVPages, name: str, needed: int):
    """Its requests need `needed` blocks and hold as many of them as its engine has."""
    tenant = pages.tenants[name]
    pages.report(name, tenant.num_blocks, min(needed, tenant.num_blocks), needed)


def test_a_model_joins_with_its_minimum():
    pages = budget_of(100, a=(10, 400))
    assert pages.granted_blocks("a") == 12  # whole pages: 3 of 4 blocks
    assert pages.free_pages == 97


def test_a_short_model_grows_into_free_pages():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 120)
    assert pages.rebalance() == {"a": 120}
    assert pages.free_pages == 100 - 30 - 2


def test_growth_stops_at_the_reserved_range():
    pages = budget_of(100, a=(8, 40))
    demand(pages, "a", 300)
    settle(pages)
    assert pages.granted_blocks("a") == 40


def test_an_idle_model_keeps_its_pages_while_nobody_is_short():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 200)
    settle(pages)
    demand(pages, "a", 0)
    settle(pages)
    assert pages.granted_blocks("a") == 200  # its prefix cache stays until the pages are wanted


def test_under_pressure_an_idle_models_pages_go_to_the_busy_one():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 360)
    settle(pages)
    assert pages.granted_blocks("a") == 360
    demand(pages, "a", 0)
    demand(pages, "b", 200)
    settle(pages)
    assert pages.granted_blocks("b") == 200
    assert pages.granted_blocks("a") == 400 - 200  # all that b needed, no more


def test_idle_models_give_back_before_busy_ones():
    pages = budget_of(100, a=(8, 400), b=(8, 400), c=(8, 400))
    demand(pages, "a", 120)
    demand(pages, "b", 120)
    settle(pages)
    demand(pages, "a", 0)      # a idle, b still busy with what it has
    demand(pages, "c", 160)
    settle(pages)
    assert pages.granted_blocks("b") == 120
    assert pages.granted_blocks("c") == 160
    assert pages.granted_blocks("a") == 400 - 120 - 160


def test_a_busy_model_that_took_the_budget_gives_back_what_another_needs_up_to_half():
    pages = budget_of(100, a=(8, 800), b=(8, 800))
    demand(pages, "a", 600)
    settle(pages)
    assert pages.granted_blocks("a") == 400 - 8  # all but b's minimum
    demand(pages, "b", 200)  # half of 400 blocks
    settle(pages, rounds=8)
    assert pages.granted_blocks("b") == 200
    assert pages.granted_blocks("a") == 200


@pytest.mark.parametrize("b_first", [False, True])
def test_a_busy_model_that_needs_less_than_half_keeps_all_it_needs(b_first):
    pages = budget_of(100, a=(8, 800), b=(8, 800))
    demand(pages, "b", 800)  # short of blocks, and would take all it can
    if b_first:
        settle(pages)  # all but a's minimum
    demand(pages, "a", 160)
    settle(pages, rounds=8)
    assert pages.granted_blocks("a") == 160
    assert pages.granted_blocks("b") == 400 - 160  # the rest of the budget


@pytest.mark.parametrize("dip", [100, 0])
def test_a_dip_in_demand_or_a_moment_idle_keeps_a_models_pages_for_the_hold(dip):
    pages = KVPages(100 * PAGE, page_bytes=PAGE, hold_rounds=5)
    for name in "ab":
        pages.join(name, 1, 8, 800)
    engines_follow(pages)
    demand(pages, "a", 160)
    demand(pages, "b", 800)  # short, and would take all it can
    settle(pages, rounds=8)
    assert pages.granted_blocks("a") == 160
    demand(pages, "a", dip)  # requests ended; the next ones are on their way
    settle(pages, rounds=3)
    assert pages.granted_blocks("a") == 160
    demand(pages, "a", 100)  # they came, needing less; once the hold is over the rest goes to b
    settle(pages, rounds=8)
    assert pages.granted_blocks("a") == 100 and pages.granted_blocks("b") == 300


def test_shares_fit_the_budget_when_a_minimum_lifts_one_above_the_level():
    pages = budget_of(100, a=(40, 800), b=(240, 800), c=(40, 800))  # b idle, with a large minimum
    demand(pages, "a", 40)
    demand(pages, "c", 600)
    assert pages.shares() == {"a": 10, "b": 60, "c": 30}
    pages.set_budget(80 * PAGE)  # a model is loading
    assert pages.shares() == {"a": 10, "b": 60, "c": 10}


def test_busy_models_that_both_want_more_than_half_get_equal_halves():
    pages = budget_of(100, a=(8, 800), b=(8, 800))
    demand(pages, "a", 600)
    demand(pages, "b", 300)
    settle(pages, rounds=8)
    assert pages.granted_blocks("a") == pages.granted_blocks("b") == 200


def test_a_busy_model_never_drops_below_its_share():
    pages = budget_of(100, a=(8, 800), b=(8, 800), c=(8, 800))
    for name in "abc":
        demand(pages, name, 400)
    settle(pages, rounds=10)
    shares = pages.shares()
    assert sorted(shares.values()) == [33, 33, 34]  # equal thirds of 100 pages, and the page left over
    for name in "abc":
        assert pages.tenants[name].granted_pages >= shares[name]


def test_nobody_drops_below_its_minimum():
    pages = budget_of(10, a=(8, 400), b=(8, 400))
    demand(pages, "a", 400)
    demand(pages, "b", 400)
    settle(pages, rounds=6)
    assert pages.granted_blocks("a") >= 8 and pages.granted_blocks("b") >= 8
    assert pages.free_pages >= 0


def test_blocks_in_use_stay_held_until_their_requests_finish():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 392)
    settle(pages)
    demand(pages, "b", 200)
    for _ in range(3):  # a's requests hold all its blocks meanwhile
        pages.rebalance()
    assert pages.granted_blocks("a") < 392  # asked to shrink to its share
    assert pages.tenants["a"].granted_pages >= pages.shares()["a"]
    assert pages.granted_blocks("b") == 8 and pages.free_pages == 0  # nothing free before its requests finish
    pages.report("a", 200, 200, 392)  # some finished; its engine retired their blocks
    pages.rebalance()
    assert pages.tenants["b"].granted_pages == 100 - pages.held_pages(pages.tenants["a"])
    assert pages.tenants["b"].granted_pages >= pages.shares()["b"]


def test_pages_come_back_only_once_the_engine_freed_them():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 392)
    settle(pages)
    demand(pages, "a", 0)
    demand(pages, "b", 200)
    pages.rebalance()  # a's grant shrinks, but its engine has not said so yet
    assert pages.free_pages == 0
    assert pages.granted_blocks("b") == 8
    engines_follow(pages)
    pages.rebalance()
    assert pages.granted_blocks("b") == 200


def test_sleep_returns_all_its_pages():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 300)
    settle(pages)
    pages.leave("a")
    assert pages.free_pages == 100 - 2
    demand(pages, "b", 392)
    settle(pages)
    assert pages.granted_blocks("b") == 392
    assert pages.join("a", 1, 8, 400) == 8  # awake again: its minimum, the rest when it is wanted
    assert pages.tenants["a"].granted_pages == 2


def test_a_smaller_budget_is_met_from_idle_models():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 300)
    settle(pages)
    demand(pages, "a", 0)
    pages.set_budget(40 * PAGE)  # another model loaded its weights
    demand(pages, "b", 100)
    settle(pages)
    assert pages.granted_blocks("b") == 100
    assert sum(pages.held_pages(t) for t in pages.tenants.values()) <= 40


def test_a_smaller_budget_is_met_from_busy_models_down_to_their_shares():
    pages = budget_of(100, a=(8, 400), b=(8, 400))
    demand(pages, "a", 300)
    demand(pages, "b", 100)
    settle(pages)
    assert pages.granted_blocks("a") == 300 and pages.granted_blocks("b") == 100
    pages.set_budget(40 * PAGE)  # a third model's weights are loading
    demand(pages, "a", 300)
    demand(pages, "b", 100)
    settle(pages)
    assert sum(pages.held_pages(t) for t in pages.tenants.values()) <= 40
    assert pages.granted_blocks("a") == pages.granted_blocks("b") == 80  # halves: both need more


@pytest.mark.parametrize("args", [(0, 8, 400), (1, 0, 400), (1, 8, 4)])
def test_a_tenant_needs_sizes_that_make_sense(args):
    with pytest.raises(ValueError, match="KV tenant"):
        KVPages(100).join("a", *args)


def test_b6_sizes_qwen3_4b_keeps_what_its_requests_need_and_llama_2_7b_gets_the_rest():
    """B6 all at once on an H100: 128 requests of 1,152 tokens in flight to each model, about 50 GiB of KV
    pages beside both models' weights (2 MiB each)."""
    mib = 1 << 20
    pages = KVPages(50 * 1024 * mib, page_bytes=2 * mib, hold_rounds=100)
    pages.join("qwen3-4b", 16 * 36 * 8 * 128 * 2 * 2, 256, 22_000)      # 2.25 MiB blocks
    pages.join("llama-2-7b", 16 * 32 * 32 * 128 * 2 * 2, 256, 6_000)    # 8 MiB blocks
    engines_follow(pages)
    for name in pages.tenants:
        demand(pages, name, 128 * 72)
    settle(pages, rounds=10)
    assert pages.granted_blocks("qwen3-4b") == 128 * 72
    llama = pages.granted_blocks("llama-2-7b")
    assert llama == (50 * 1024 - 128 * 72 * 9 // 4) // 8  # the rest: 3,808 blocks, 52 of these requests
    assert llama * 16 // 1152 == 52
