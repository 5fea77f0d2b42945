"""How busy the GPU was in a profiled window: the union of its kernel and copy intervals, the idle
gaps between them, and each kernel's total time. Answers whether a step's time above its floor is
spent in kernels or with the device waiting for the host."""
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass(slots=True)
class Timeline:
    window_us: float
    busy_us: float
    gaps: list[tuple[float, str]]  # (idle microseconds, the name of what ran after), longest first
    by_kernel: list[tuple[str, float, int]] = field(default_factory=list)  # (name, total us, count)

    def report(self, top: int = 14) -> str:
        if not self.window_us:
            return "no device activity was traced"
        idle = self.window_us - self.busy_us
        long_gaps = [g for g, _ in self.gaps if g > 20]
        lines = [f"GPU window {self.window_us / 1e3:.2f} ms, busy {self.busy_us / 1e3:.2f} ms "
                 f"({self.busy_us / self.window_us:.0%}), idle {idle / 1e3:.2f} ms in {len(self.gaps)} gaps, "
                 f"{sum(long_gaps) / 1e3:.2f} ms of it in {len(long_gaps)} gaps over 20 us"]
        lines += [f"  {total / 1e3:9.3f} ms {count:6d}x  {name[:90]}" for name, total, count in self.by_kernel[:top]]
        lines += [f"  gap {gap:8.1f} us before {name[:80]}" for gap, name in self.gaps[:6]]
        return "\n".join(lines)


def timeline(intervals: list[tuple[float, float, str]]) -> Timeline:
    """intervals: (start us, end us, name) of everything the device ran, in any order."""
    intervals = sorted(intervals)
    if not intervals:
        return Timeline(0.0, 0.0, [])
    busy, gaps = 0.0, []
    run_start, run_end = intervals[0][0], intervals[0][1]
    for start, end, name in intervals[1:]:
        if start > run_end:
            busy += run_end - run_start
            gaps.append((start - run_end, name))
            run_start, run_end = start, end
        else:
            run_end = max(run_end, end)
    busy += run_end - run_start
    totals, counts = Counter(), Counter()
    for start, end, name in intervals:
        totals[name] += end - start
        counts[name] += 1
    by_kernel = [(name, total, counts[name]) for name, total in totals.most_common()]
    window = max(end for _, end, _ in intervals) - intervals[0][0]
    return Timeline(window, busy, sorted(gaps, reverse=True), by_kernel)


def profiler_timeline(prof) -> Timeline:
    """The device intervals of a finished torch.profiler.profile run (CUDA graph replays included:
    their kernels are traced one by one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return timeline([(e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                     if e.get("cat") in DEVICE_CATEGORIES and "dur" in e])
