"""Where a server's engines spent a run, from their step logs (`corral serve --step-log FILE`, or a
serve_side_by_side.sh variant `trace:step_log='FILE'`): per model and run, the time stepping and the time idle
(waiting for work with nothing running), the longest waits and when they came, and the steps by how many
requests ran. A wait longer than --split seconds separates runs (a client's warm-up, then each rate).

With --requests FILE (the client's per-request record, serve_side_by_side.sh's REQUESTS_JSONL), each run also
gets the two halves of a request's trip, on the wall clock both record: from the client's send to the engine
taking it, with the server's share of that (`transit_s`, from the API process receiving the request to the engine
taking it; up to b605d0c, from its hand-over to the engine), and
from the engine finishing it to the client having all of it. The k-th send is paired with the k-th request the
engine took, and the k-th finish with the k-th end the client saw (the two curves' distance, whatever the
order).

    python -m benchmarks.step_log_report steps.jsonl
    python -m benchmarks.step_log_report steps.jsonl --requests requests.jsonl
"""
import argparse
import json
from collections import defaultdict
from dataclasses import dataclass, field

RUNNING_BINS = (0, 1, 16, 64, 128, 192, 256, 1 << 30)


@dataclass(slots=True)
class Run:
    model: str
    start: float  # seconds on the log's clock, when the run's first step began
    end: float
    step_s: float = 0.0
    tokens: int = 0
    waits: list[tuple[float, float]] = field(default_factory=list)  # (when it began, seconds), longest first
    by_running: dict[str, list[float]] = field(default_factory=dict)  # running bin -> step seconds
    wall_offset: float | None = None  # the wall clock (`at`) less the log's clock (`t`)
    receipts: list[float] = field(default_factory=list)  # when the engine took each request, on the log's clock
    finishes: list[float] = field(default_factory=list)  # when the engine finished each request, the same
    transits: list[float] = field(default_factory=list)  # per step that took some: the longest receipt->engine time
    kv_peak: float | None = None  # the largest fraction of the KV cache in use after a step (logs since 89e9ae9)
    kv_blocks: list[int] = field(default_factory=list)  # the KV cache's blocks after each step (an elastic grant)
    kv_used_peak: int = 0  # the most blocks in use after a step
    preemptions: int = 0

    def turnaround(self, requests: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
        """From the client's record of this run's requests, (sent, ended) on the wall clock (other runs' are
        left out): the seconds from each send to the engine taking a request, and from the engine finishing a
        request to the client having all of it, the k-th of one paired with the k-th of the other."""
        if self.wall_offset is None or not self.receipts:
            return [], []
        receipts = sorted(r + self.wall_offset for r in self.receipts)
        mine = [(sent, ended) for sent, ended in requests if receipts[0] - 2.0 <= sent <= receipts[-1]]
        if not mine:
            return [], []
        sends, ends = sorted(sent for sent, _ in mine), sorted(ended for _, ended in mine)
        finishes = sorted(f + self.wall_offset for f in self.finishes)
        # a warm-up's requests, before the client's record begins, are left out
        receipts = [r for r in receipts if r >= sends[0]]
        finishes = [f for f in finishes if f >= sends[0]]
        return ([r - s for s, r in zip(sends, receipts)], [e - f for f, e in zip(finishes, ends)])

    @property
    def idle_s(self) -> float:
        """The waits inside the run, with no request in the engine."""
        return sum(seconds for _, seconds in self.waits)

    def report(self, top: int = 5) -> str:
        wall = self.end - self.start
        lines = [f"{self.model}: run of {wall:.2f} s from t={self.start:.2f}: stepping {self.step_s:.2f} s, idle "
                 f"{self.idle_s:.3f} s in {len(self.waits)} waits, between steps {wall - self.step_s - self.idle_s:.3f}"
                 f" s; {self.tokens} tokens ({self.tokens / wall if wall else 0:,.0f} tok/s)"
                 + (f"; KV cache in use at most {self.kv_peak:.0%}, {self.preemptions} preemptions"
                    if self.kv_peak is not None else "")]
        if self.kv_blocks:
            lines.append(f"  KV blocks {min(self.kv_blocks):,}-{max(self.kv_blocks):,} (median "
                         f"{sorted(self.kv_blocks)[len(self.kv_blocks) // 2]:,}), at most {self.kv_used_peak:,} in use")
        lines += [f"  wait {seconds * 1e3:8.1f} ms at t={at:.3f}" for at, seconds in self.waits[:top]]
        for name, steps in sorted(self.by_running.items(), key=lambda item: int(item[0].split("-")[0].rstrip("+"))):
            lines.append(f"  running {name:>9s}: {len(steps):5d} steps, {sum(steps):6.2f} s, "
                         f"{sum(steps) / len(steps) * 1e3:7.2f} ms each")
        return "\n".join(lines)


def running_bin(n: int) -> str:
    for lo, hi in zip(RUNNING_BINS, RUNNING_BINS[1:]):
        if lo <= n < hi:
            return f"{lo}-{hi - 1}" if hi < 1 << 30 else f"{lo}+"
    return "?"


def runs(lines: list[dict], split: float = 1.0) -> list[Run]:
    """Each model's steps in the log's order, cut into runs where the engine waited longer than `split` seconds
    or its clock went back (t counts from each engine's start: a restarted or reloaded engine's steps follow).
    A line is written after its step: the step began at t - step_s, and its wait before that."""
    by_model = defaultdict(list)
    for line in lines:
        by_model[line["model"]].append(line)
    found = []
    for model, steps in by_model.items():
        run, preempted = None, 0  # the engine's count of preemptions since it started, as of the line before
        for line in steps:
            began = line["t"] - line["step_s"]
            if run is None or line["idle_s"] > split or line["t"] < run.end:
                run = Run(model, began, line["t"])
                found.append(run)
            elif line["idle_s"] > 0:
                run.waits.append((began - line["idle_s"], line["idle_s"]))
            run.end = line["t"]
            run.step_s += line["step_s"]
            run.tokens += line["tokens"]
            run.by_running.setdefault(running_bin(line["running"]), []).append(line["step_s"])
            if "at" in line:
                run.wall_offset = line["at"] - line["t"]
            run.finishes += [line["t"]] * line.get("finished", 0)
            if line.get("added"):
                run.receipts += [began] * line["added"]
                run.transits.append(line["transit_s"])
            if "kv_usage" in line:
                run.kv_peak = max(run.kv_peak or 0.0, line["kv_usage"])
                if "kv_blocks" in line:
                    run.kv_blocks.append(line["kv_blocks"])
                    run.kv_used_peak = max(run.kv_used_peak, round(line["kv_usage"] * line["kv_blocks"]))
                # a count below the last is a restarted engine's, counting from 0 again
                run.preemptions += line["preemptions"] - (preempted if line["preemptions"] >= preempted else 0)
                preempted = line["preemptions"]
    for r in found:
        r.waits.sort(key=lambda w: -w[1])
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--split", type=float, default=1.0, help="a wait longer than this (seconds) starts a new run")
    ap.add_argument("--requests", help="the client's per-request JSON lines, with sent_at")
    args = ap.parse_args()
    with open(args.path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    requests = defaultdict(list)  # model -> (sent, ended) on the wall clock
    if args.requests:
        with open(args.requests) as f:
            for line in f:
                if line.strip() and "sent_at" in (r := json.loads(line)):
                    requests[r["model"]].append((r["sent_at"], r["sent_at"] + r["latency_s"]))
    for run in runs(lines, args.split):
        print(run.report())
        to_engine, to_client = run.turnaround(requests[run.model])
        if to_engine:
            print(f"  client's send to the engine, {len(to_engine)} requests: {spread(to_engine)}, the first "
                  f"{to_engine[0] * 1e3:.1f} ms (the engine alone starts at once); of it the server's receipt to the "
                  f"engine, the longest per step: {spread(run.transits)}")
        if to_client:
            print(f"  the engine's last token to the client's end, {len(to_client)} requests: {spread(to_client)}, "
                  f"the last {to_client[-1] * 1e3:.1f} ms")


def spread(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return (f"p50 {ordered[len(ordered) // 2] * 1e3:.1f} ms, p90 {ordered[int(len(ordered) * 0.9)] * 1e3:.1f}, "
            f"max {ordered[-1] * 1e3:.1f}")


if __name__ == "__main__":
    main()
