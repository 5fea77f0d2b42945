"""B8's traffic and its reading of the server's model states, without a server."""
from collections import Counter

from benchmarks.oversubscription import skewed_poisson, transitions, waited
from benchmarks.served_models import ModelsLog

MODELS = [f"m{i}" for i in range(8)]


def log_of(*rows: tuple[float, dict[str, str]]) -> ModelsLog:
    log = ModelsLog()
    log.samples = [(t, {name: {"id": name, "state": state} for name, state in states.items()}) for t, states in rows]
    return log


def test_the_same_seed_gives_the_same_traffic_and_another_seed_other_traffic():
    assert skewed_poisson(MODELS, 4, 60, 1.0, seed=3) == skewed_poisson(MODELS, 4, 60, 1.0, seed=3)
    assert skewed_poisson(MODELS, 4, 60, 1.0, seed=3)[1] != skewed_poisson(MODELS, 4, 60, 1.0, seed=4)[1]


def test_arrivals_come_at_the_rate_within_the_duration_in_order():
    _, arrivals = skewed_poisson(MODELS, 20, 500, 1.0, seed=0)
    times = [a.at for a in arrivals]
    assert times == sorted(times) and 0 < times[0] and times[-1] < 500
    assert 0.95 * 20 * 500 < len(arrivals) < 1.05 * 20 * 500


def test_models_are_requested_in_proportion_to_one_over_their_rank():
    ranked, arrivals = skewed_poisson(MODELS, 20, 500, 1.0, seed=0)
    assert sorted(ranked) == MODELS
    counts = Counter(a.model for a in arrivals)
    harmonic = sum(1 / k for k in range(1, 9))
    for rank, name in enumerate(ranked):
        expected = len(arrivals) / (rank + 1) / harmonic
        assert abs(counts[name] - expected) < 0.15 * expected + 30


def test_state_changes_count_as_sleeps_wakes_loads_and_unloads():
    log = log_of((0.0, {"a": "unloaded", "b": "ready"}), (0.1, {"a": "loading", "b": "sleeping"}),
                 (0.2, {"a": "ready", "b": "sleeping"}), (0.3, {"a": "ready", "b": "loading"}),
                 (0.4, {"a": "sleeping", "b": "ready"}), (0.5, {"a": "unloaded", "b": "ready"}),
                 (0.6, {"a": "ready", "b": "unloaded"}))
    assert transitions(log) == {"sleep": 2, "wake": 1, "load": 2, "unload": 2}


def test_a_request_waited_when_its_model_was_seen_not_ready_before_its_first_token():
    log = log_of((1.0, {"a": "ready"}), (2.0, {"a": "sleeping"}), (3.0, {"a": "loading"}), (4.0, {"a": "ready"}))
    assert waited(log, "a", 2.5, 4.2)            # loading was seen in between
    assert not waited(log, "a", 3.9, 5.0)        # ready throughout
    assert waited(log, "a", 2.1, 2.3)            # no sample in between: the one before, sleeping
    assert not waited(log, "a", 1.1, 1.3)
