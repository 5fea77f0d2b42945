"""benchmarks.step_log_report: runs cut at long waits, idle time and steps by load, from a step log."""
from benchmarks.step_log_report import runs


def line(t, idle, step, tokens, running, model="m", **more):
    return {"model": model, "t": t, "idle_s": idle, "step_s": step, "tokens": tokens, "running": running,
            "waiting": 0, **more}


def test_a_long_wait_starts_a_new_run_and_short_ones_count_as_idle_inside_it():
    log = [line(5.1, 5.0, 0.1, 4, 4),            # the first run: after the server's start
           line(5.2, 0.0, 0.1, 4, 4),
           line(5.35, 0.05, 0.1, 2, 130),        # a 50 ms wait for work inside the run
           line(12.0, 6.0, 0.2, 3, 3),           # a second run, after 6 s with nothing to do
           line(1.0, 0.5, 0.5, 9, 1, model="other")]
    found = runs(log, split=1.0)
    (other,) = [r for r in found if r.model == "other"]
    first, second = sorted((r for r in found if r.model == "m"), key=lambda r: r.start)
    assert (first.model, round(first.start, 6), first.end, first.tokens) == ("m", 5.0, 5.35, 10)
    assert round(first.step_s, 6) == 0.3 and round(first.idle_s, 6) == 0.05
    assert [(round(at, 6), s) for at, s in first.waits] == [(5.2, 0.05)]
    assert sorted(first.by_running) == ["1-15", "128-191"] and len(first.by_running["1-15"]) == 2
    assert (round(second.start, 6), second.end, second.idle_s, second.tokens) == (11.8, 12.0, 0.0, 3)
    assert (other.model, other.tokens, round(other.start, 6)) == ("other", 9, 0.5)
    assert "run of 0.35 s" in first.report() and "50.0 ms at t=5.200" in first.report()


def test_a_restarted_engine_whose_clock_starts_again_begins_a_new_run():
    log = [line(1.1, 0.5, 0.1, 4, 4), line(1.2, 0.0, 0.1, 4, 4),    # the first engine
           line(0.5, 0.05, 0.1, 3, 3), line(0.6, 0.0, 0.1, 3, 3)]   # its restart, t from 0 again
    first, second = runs(log, split=1.0)
    assert (round(first.start, 6), first.end, first.tokens, first.idle_s) == (1.0, 1.2, 8, 0.0)
    assert (round(second.start, 6), second.end, second.tokens, second.idle_s) == (0.4, 0.6, 6, 0.0)


def test_a_run_pairs_sends_with_receipts_and_finishes_with_the_clients_ends_on_the_wall_clock():
    wall = 1000.0  # the log's t=0 on the wall clock
    log = [line(0.5, 0.4, 0.1, 1, 1, at=wall + 0.5, added=2, transit_s=0.01, finished=2),  # a warm-up's two
           line(5.2, 4.5, 0.2, 1, 3, at=wall + 5.2, added=3, transit_s=0.03),    # the run: taken at t=5.0
           line(5.5, 0.0, 0.1, 3, 4, at=wall + 5.5, added=1, transit_s=0.002, finished=1),  # one taken at t=5.4
           line(5.6, 0.0, 0.1, 3, 0, at=wall + 5.6, finished=3)]
    _, run = runs(log, split=1.0)
    # (sent, ended), unordered; one of another run
    requests = [(wall + 4.9, wall + 5.7), (wall + 4.95, wall + 5.65), (wall + 4.8, wall + 5.52), (wall + 5.1, wall + 5.9),
                (wall - 50.0, wall - 49.0)]
    to_engine, to_client = run.turnaround(requests)
    assert [round(d, 6) for d in to_engine] == [0.2, 0.1, 0.05, 0.3]
    assert [round(d, 6) for d in to_client] == [0.02, 0.05, 0.1, 0.3]
    assert run.transits == [0.03, 0.002]


def test_a_log_without_wall_times_pairs_nothing():
    (run,) = runs([line(1.0, 0.5, 0.1, 1, 1), line(1.1, 0.0, 0.1, 1, 1)], split=1.0)
    assert run.turnaround([(1.0, 2.0)]) == ([], [])


def test_a_run_reports_its_peak_kv_use_and_the_preemptions_inside_it_across_an_engine_restart():
    log = [line(1.1, 0.5, 0.1, 4, 4, kv_usage=0.2, preemptions=0),
           line(1.2, 0.0, 0.1, 4, 4, kv_usage=0.97, preemptions=3),  # three preempted at full KV
           line(1.3, 0.0, 0.1, 4, 4, kv_usage=0.5, preemptions=3),
           line(5.0, 3.0, 0.1, 4, 4, kv_usage=0.99, preemptions=5),  # the next run: two more
           line(0.5, 0.05, 0.1, 3, 3, kv_usage=0.1, preemptions=1)]  # a restarted engine, counting from 0
    first, second, third = runs(log, split=1.0)
    assert (first.kv_peak, first.preemptions) == (0.97, 3)
    assert (second.kv_peak, second.preemptions, third.preemptions) == (0.99, 2, 1)
    assert "KV cache in use at most 97%, 3 preemptions" in first.report()
    (older,) = runs([line(1.1, 0.5, 0.1, 4, 4)], split=1.0)  # a log written before these fields
    assert older.kv_peak is None and "KV cache" not in older.report()


def test_a_run_reports_the_range_of_its_kv_blocks_and_the_most_in_use_as_an_elastic_grant_moves():
    log = [line(1.1, 0.5, 0.1, 4, 4, kv_usage=0.5, kv_blocks=1000, preemptions=0),
           line(1.2, 0.0, 0.1, 4, 4, kv_usage=0.9, kv_blocks=1500, preemptions=0),  # 1,350 in use
           line(1.3, 0.0, 0.1, 4, 4, kv_usage=1.0, kv_blocks=1200, preemptions=0)]
    (run,) = runs(log, split=1.0)
    assert (min(run.kv_blocks), max(run.kv_blocks), run.kv_used_peak) == (1000, 1500, 1350)
    assert "KV blocks 1,000-1,500 (median 1,200), at most 1,350 in use" in run.report()
