import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.gpu_timeline import profiler_timeline, timeline


def test_overlapping_intervals_count_once_and_gaps_are_listed_longest_first():
    t = timeline([(30, 40, "c"), (0, 10, "a"), (5, 12, "b"), (100, 110, "a")])
    assert t.window_us == 110
    assert t.busy_us == 12 + 10 + 10
    assert t.gaps == [(60, "a"), (18, "c")]
    assert t.by_kernel[0] == ("a", 20, 2)


def test_a_window_without_device_work_reports_so():
    assert timeline([]).report() == "no device activity was traced"


def test_reads_a_cpu_only_profile_without_device_events():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(8).sum()
    assert profiler_timeline(prof).busy_us == 0
