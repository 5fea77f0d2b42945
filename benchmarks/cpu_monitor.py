"""The CPU share of each process of a serving run, by role, sampled from /proc (Linux): whether a server's API
process, its engines or the load client is the one at a full core.

    python -m benchmarks.cpu_monitor --out cpu.jsonl &          # serve_side_by_side.sh: CPU_LOG=cpu.jsonl
    python -m benchmarks.cpu_monitor --report cpu.jsonl

A sample is one JSON line: `at` (Unix seconds) and `cpu`, each busy process's percent of one core since the
sample before, under its role:
- `corral-api`: a `corral serve` process; `corral-engine PID`: a process it started (an engine);
- `vllm-api MODEL`: vLLM's OpenAI server (`--served-model-name`); `vllm-engine MODEL PID`: its children;
- `client MODEL`: a load client (the peer kit's `load_client.py` or `benchmarks.peer_load_client`);
- anything else running Python: `other PID`.
The report keeps the samples where some client was busy (a run under way) and gives each role's mean, median,
p90 and highest share over them.
"""
import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict

BUSY = 1.0  # percent of a core below which a process is left out of a sample


def role(cmdline: list[str], ancestors: list[list[str]]) -> str | None:
    """A process's role from its command line and its ancestors' (nearest first); None for one that is neither
    Python nor vLLM's. A server's descendant is its engine, whatever its own command line (a forked one keeps
    the server's)."""
    for parent in ancestors:
        server = _own_role(parent)
        if server == "corral-api":
            return "corral-engine"
        if server is not None and server.startswith("vllm-api"):
            return "vllm-engine" + server[len("vllm-api"):]
    return _own_role(cmdline)


def _own_role(cmdline: list[str]) -> str | None:
    text = " ".join(cmdline)
    if "load_client" in text:
        return f"client {_arg(cmdline, '--model')}"
    if re.search(r"corral(\.cli)? serve", text):
        return "corral-api"
    if "vllm.entrypoints.openai.api_server" in text or "vllm serve" in text:
        return f"vllm-api {_arg(cmdline, '--served-model-name')}"
    return "other" if "python" in text or text.startswith("VLLM") else None


def _arg(cmdline: list[str], name: str) -> str:
    for i, arg in enumerate(cmdline):
        if arg == name and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return "?"


def processes() -> dict[int, tuple[int, int, list[str]]]:
    """pid -> (parent pid, CPU ticks so far, command line) of every process still readable."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        found[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), cmdline)
    return found


def labels(procs: dict[int, tuple[int, int, list[str]]]) -> dict[int, str]:
    out = {}
    for pid, (ppid, _, cmdline) in procs.items():
        ancestors, seen = [], {pid}
        while ppid in procs and ppid not in seen:
            seen.add(ppid)
            ancestors.append(procs[ppid][2])
            ppid = procs[ppid][0]
        if (name := role(cmdline, ancestors)) is not None:
            out[pid] = name if name.startswith(("corral-api", "client", "vllm-api")) else f"{name} {pid}"
    return out


def monitor(out, interval: float, duration: float | None):
    hz = os.sysconf("SC_CLK_TCK")
    before, then, start = processes(), time.monotonic(), time.monotonic()
    while duration is None or time.monotonic() - start < duration:
        time.sleep(interval)
        now_procs, now = processes(), time.monotonic()
        names, cpu = labels(now_procs), defaultdict(float)
        for pid, name in names.items():
            if pid in before:
                cpu[name] += (now_procs[pid][1] - before[pid][1]) / hz / (now - then) * 100
        busy = {name: round(share, 1) for name, share in sorted(cpu.items()) if share >= BUSY}
        out.write(json.dumps({"at": round(time.time(), 3), "cpu": busy}) + "\n")
        out.flush()
        before, then = now_procs, now


def report(path: str) -> dict[str, dict[str, float]]:
    """Per role: mean, p50, p90 and max percent of a core over the samples where a client was busy."""
    with open(path) as f:
        samples = [json.loads(line)["cpu"] for line in f if line.strip()]
    running = [s for s in samples if any(name.startswith("client") and share >= 20 for name, share in s.items())]
    names = {name for sample in running for name in sample}
    shares = {name: [sample.get(name, 0.0) for sample in running] for name in names}
    summary = {}
    for name, values in sorted(shares.items()):
        values.sort()
        summary[name] = {"samples": len(values), "mean": round(sum(values) / len(values), 1),
                         "p50": values[len(values) // 2], "p90": values[min(len(values) - 1, int(len(values) * 0.9))],
                         "max": values[-1]}
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append samples here (default: standard output)")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    ap.add_argument("--duration", type=float, help="stop after this many seconds (default: when killed)")
    ap.add_argument("--report", metavar="FILE", help="summarize a file of samples instead")
    args = ap.parse_args()
    if args.report:
        for name, stats in report(args.report).items():
            print(f"{name:32s} " + "  ".join(f"{k} {v}" for k, v in stats.items()))
        return
    out = open(args.out, "a") if args.out else sys.stdout
    try:
        monitor(out, args.interval, args.duration)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
