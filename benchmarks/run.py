"""Runs a chosen set of checks and benchmarks in one GPU session; results go to $OUT/results.jsonl.

    python -m benchmarks.run check b1:qwen3-0.6b b3:qwen3-4b peer:qwen3-0.6b
"""
import os
import subprocess
import sys
import time

STEPS = {
    "kernels": [sys.executable, "-m", "pytest", "-q", "-x", "tests/kernels", "-p", "no:cacheprovider"],
    "check": [sys.executable, "-m", "benchmarks.engine_check"],
    "b1": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--model"],
    "b1sync": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--no-async-scheduling", "--model"],
    "b1eager": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--enforce-eager", "--model"],
    "b1json": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--structured-outputs", "all",
               "--tokenizer", ".bench_tokenizer", "--repeat", "3", "--model"],  # three timed runs: they varied
    "b1jsonarray": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--structured-outputs", "all",
                    "--schema", "array", "--tokenizer", ".bench_tokenizer", "--model"],
    "b1mixed": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--structured-outputs", "mixed",
                "--tokenizer", ".bench_tokenizer", "--model"],
    "b1profile": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B1", "--profile", "--model"],
    "phases": [sys.executable, "-m", "benchmarks.step_phases", "--model"],
    "b2": [sys.executable, "-m", "benchmarks.throughput", "--workload", "B2", "--model"],
    "b3": [sys.executable, "-m", "benchmarks.latency", "--model"],
    "b3profile": [sys.executable, "-m", "benchmarks.latency", "--profile", "--model"],
    "b3eager": [sys.executable, "-m", "benchmarks.latency", "--enforce-eager", "--model"],
    "b4": [sys.executable, "-m", "benchmarks.serving", "--model"],
    "b5": [sys.executable, "-m", "benchmarks.kernels"],
    "sweep": [sys.executable, "-m", "benchmarks.kernels", "--decode-sweep", "--models"],
    "gemv": [sys.executable, "-m", "benchmarks.gemv", "--models"],
    "b6": [sys.executable, "-m", "benchmarks.serving", "--models"],
    "b6idle": [sys.executable, "-m", "benchmarks.elastic_kv", "--models"],
    "b8": [sys.executable, "-m", "benchmarks.oversubscription", "--models"],
    "ceiling": [sys.executable, "-m", "benchmarks.ceiling"],
    "peer": [sys.executable, "-m", "benchmarks.peer_transformers", "--model"],
    "embed": [sys.executable, "-m", "benchmarks.embeddings", "--model"],
}


def main(argv: list[str]) -> int:
    status = 0
    for item in argv:
        name, _, model = item.partition(":")
        step = STEPS[name]
        if model:
            command = step + [model]
        else:  # the option the step ends with is left to the script's default
            command = step[:-1] if step[-1].startswith("--") else step
        print(f"=== {item}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(command, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        print(f"=== {item}: exit {rc} in {time.perf_counter() - start:.1f} s", flush=True)
        status |= rc != 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
