"""The memory planner alone: footprints, the budget, the cap on loaded models, and the least recently
used idle models slept, then unloaded, to make room."""
import pytest

from corral.server.memory_planner import (GiB, MiB, Footprint, MemoryPlanner, NeverFits, NoRoomNow, Resident,
                                          format_bytes, kv_cache_bytes)

ONE = Footprint(weights_bytes=600 * MiB, kv_cache_bytes=400 * MiB)  # 1000 MiB awake, nothing asleep
WITH_ENGINE = Footprint(weights_bytes=600 * MiB, kv_cache_bytes=300 * MiB, overhead_bytes=100 * MiB)


def resident(name, last_used, footprint=ONE, **kw):
    return Resident(name, footprint, last_used, **kw)


def test_kv_cache_bytes_count_whole_blocks_of_keys_and_values_of_every_layer():
    # Qwen3-4B: 36 layers, 8 KV heads of 128, bf16: 144 KiB a token
    assert kv_cache_bytes(16, 16, 36, 8, 128, 2) == 16 * 2 * 36 * 8 * 128 * 2
    assert kv_cache_bytes(17, 16, 36, 8, 128, 2) == kv_cache_bytes(32, 16, 36, 8, 128, 2)


def test_a_model_that_fits_beside_the_others_evicts_nothing():
    plan = MemoryPlanner(budget_bytes=3000 * MiB).plan("c", ONE, [resident("a", 1), resident("b", 2)])
    assert plan.sleep == [] and plan.unload == []


def test_the_least_recently_used_idle_model_is_put_to_sleep_first():
    plan = MemoryPlanner(budget_bytes=2000 * MiB).plan("c", ONE, [resident("a", 5), resident("b", 2)])
    assert plan.sleep == ["b"] and plan.unload == []


def test_as_many_as_needed_sleep_in_lru_order_and_no_more():
    residents = [resident("a", 3), resident("b", 1), resident("c", 2), resident("d", 4)]
    plan = MemoryPlanner(budget_bytes=4500 * MiB).plan("big", Footprint(2000 * MiB, 500 * MiB), residents)
    assert plan.sleep == ["b", "c"]


def test_models_that_cannot_sleep_are_unloaded_in_their_turn():
    residents = [resident("a", 1, can_sleep=False), resident("b", 2)]
    plan = MemoryPlanner(budget_bytes=2000 * MiB).plan("c", ONE, residents)
    assert plan.unload == ["a"] and plan.sleep == []


def test_sleeping_models_are_unloaded_when_their_overhead_is_in_the_way():
    residents = [resident("a", 1, WITH_ENGINE, asleep=True), resident("b", 2, WITH_ENGINE)]
    plan = MemoryPlanner(budget_bytes=2100 * MiB).plan("c", WITH_ENGINE, residents)
    assert plan.sleep == [] and plan.unload == []  # 100 (a asleep) + 1000 + 1000
    plan = MemoryPlanner(budget_bytes=2100 * MiB).plan("c", Footprint(1900 * MiB, 0), residents)
    assert plan.sleep == ["b"] and plan.unload == []  # 100 + 100 + 1900
    plan = MemoryPlanner(budget_bytes=2050 * MiB).plan("c", Footprint(1900 * MiB, 0), residents)
    assert plan.unload == ["a"] and plan.sleep == ["b"]  # 100 + 1900


def test_a_model_slept_then_still_in_the_way_is_unloaded_instead():
    residents = [resident("a", 1, WITH_ENGINE)]
    plan = MemoryPlanner(budget_bytes=1000 * MiB).plan("c", WITH_ENGINE, residents)
    assert plan.sleep == [] and plan.unload == ["a"]


def test_models_in_use_are_never_evicted_and_are_named_when_in_the_way():
    residents = [resident("a", 1, in_use=True), resident("b", 2)]
    plan = MemoryPlanner(budget_bytes=2000 * MiB).plan("c", ONE, residents)
    assert plan.sleep == ["b"]
    with pytest.raises(NoRoomNow) as e:
        MemoryPlanner(budget_bytes=2000 * MiB).plan("c", ONE, [resident("a", 1, in_use=True),
                                                               resident("b", 2, in_use=True)])
    assert "a (1000.00 MiB)" in str(e.value) and "b (1000.00 MiB)" in str(e.value)
    assert "1.95 GiB" in str(e.value)


def test_a_model_larger_than_the_budget_never_fits_whatever_is_loaded():
    with pytest.raises(NeverFits) as e:
        MemoryPlanner(budget_bytes=900 * MiB).plan("c", ONE, [])
    assert "1000.00 MiB" in str(e.value) and "900.00 MiB" in str(e.value) and "model c" in str(e.value)


def test_max_loaded_models_caps_the_awake_models_whatever_their_size():
    planner = MemoryPlanner(max_loaded_models=2)
    assert planner.plan("c", ONE, [resident("a", 1)]).sleep == []
    assert planner.plan("c", ONE, [resident("a", 2), resident("b", 1)]).sleep == ["b"]
    assert planner.plan("c", ONE, [resident("a", 2, asleep=True), resident("b", 1)]).sleep == []
    with pytest.raises(NoRoomNow, match="max_loaded_models is 2"):
        planner.plan("c", ONE, [resident("a", 2, in_use=True), resident("b", 1, in_use=True)])


def test_a_sleeping_model_waking_counts_its_whole_footprint_not_its_own_overhead_twice():
    residents = [resident("a", 1, WITH_ENGINE, asleep=True), resident("b", 2, WITH_ENGINE)]
    assert MemoryPlanner(budget_bytes=2000 * MiB).plan("a", WITH_ENGINE, residents).sleep == []
    assert MemoryPlanner(budget_bytes=1900 * MiB).plan("a", WITH_ENGINE, residents).sleep == ["b"]


def test_sleeping_weights_stay_within_the_host_budget_the_oldest_sleeper_unloaded_first():
    # a (oldest) sleeps already with 600 MiB of weights on the host; b must make room for c, and the host
    # holds the weights of one sleeping model: a is unloaded so that b can sleep
    residents = [resident("a", 1, asleep=True), resident("b", 2)]
    plan = MemoryPlanner(budget_bytes=1500 * MiB, host_budget_bytes=1000 * MiB).plan("c", ONE, residents)
    assert (plan.unload, plan.sleep) == (["a"], ["b"])
    plan = MemoryPlanner(budget_bytes=1500 * MiB, host_budget_bytes=1200 * MiB).plan("c", ONE, residents)
    assert (plan.unload, plan.sleep) == ([], ["b"])


def test_a_model_whose_weights_the_host_budget_cannot_hold_is_unloaded_instead_of_slept():
    big = Footprint(weights_bytes=2000 * MiB, kv_cache_bytes=400 * MiB)
    residents = [resident("a", 1, footprint=big), resident("b", 2, asleep=True)]
    plan = MemoryPlanner(budget_bytes=2500 * MiB, host_budget_bytes=1000 * MiB).plan("c", ONE, residents)
    assert (plan.unload, plan.sleep) == (["a"], [])  # b, slept more recently than a was used, stays asleep


def test_a_newer_sleeper_is_not_unloaded_to_let_an_older_model_sleep():
    residents = [resident("a", 1), resident("b", 5, asleep=True)]
    plan = MemoryPlanner(budget_bytes=1500 * MiB, host_budget_bytes=1000 * MiB).plan("c", ONE, residents)
    assert (plan.unload, plan.sleep) == (["a"], [])


def test_format_bytes_reads_as_a_person_would_write_it():
    assert format_bytes(3 * GiB // 2) == "1.50 GiB" and format_bytes(512 * MiB) == "512.00 MiB"
    assert format_bytes(2048) == "2.00 KiB" and format_bytes(12) == "12 B"
