"""B7 (switching models on one device): a real `corral serve` subprocess on loopback, one model, driven
through the model endpoints. Each figure is one JSON record (benchmarks.common.emit):

- load_cold / load_warm: POST /v1/models/{m}/load of an unloaded model from the local store, with the
  checkpoint's pages dropped from the page cache first (posix_fadvise DONTNEED), then with them cached;
  the first token after the load is timed too, and the engine's own account of its start (weights read,
  memory profile, KV cache, CUDA graphs: `startup_seconds` in /v1/models), so the weights' GB/s is the
  checkpoint over the time reading it.
- sleep: POST /sleep of the idle, ready model.
- wake_first_token: a sleeping model's first streamed token of a one-token completion (the request wakes it).
- wake: POST /wake alone.

    python -m benchmarks.model_switch --model qwen3-4b        # random bf16 weights written to a temp store
    python -m benchmarks.model_switch --checkpoint /models/Qwen3-4B
    python -m benchmarks.model_switch --model DIR --device cpu --repeats 2 --memory-budget 4GiB   # smoke test
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.checkpoints import write_checkpoint
from benchmarks.common import emit, environment
from benchmarks.serving import prepare_model


def drop_page_cache(directory: Path):
    for path in directory.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Server:
    def __init__(self, model: str, args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "corral.cli", "--log-level", "WARNING", "serve", model,
                   "--served-model-name", "m", "--port", str(self.port), "--lazy", "--max-model-len",
                   str(args.max_model_len), "--reasoning-parser", "none", "--max-loaded-models", "1"]
        if args.memory_budget:
            command += ["--memory-budget", args.memory_budget]
        if args.device:
            command += ["--device", args.device]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"corral serve exited with {self.process.returncode}")
            time.sleep(0.2)
        raise TimeoutError("the server did not start")

    def post(self, action: str) -> tuple[float, dict]:
        start = time.perf_counter()
        response = httpx.post(f"{self.url}/v1/models/m/{action}", timeout=900)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        return elapsed, response.json()

    def first_token(self) -> float:
        body = {"model": "m", "prompt": [1, 2, 3, 4], "max_tokens": 1, "ignore_eos": True, "stream": True}
        start = time.perf_counter()
        with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=900) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
                    return time.perf_counter() - start
        raise RuntimeError("no token came back")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen3-4b", help="a benchmark config name or a directory with config.json")
    p.add_argument("--checkpoint", help="a local model directory with safetensors weights (default: random ones)")
    p.add_argument("--device")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--memory-budget", help="e.g. 60GiB (default: the server's, from --gpu-memory-utilization)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    store = Path(args.checkpoint) if args.checkpoint else \
        write_checkpoint(args.model, Path(tempfile.gettempdir()) / "corral-bench-store" / Path(args.model).name)
    if not (store / "tokenizer.json").is_file():
        prepare_model(str(store))
    weights = sum(f.stat().st_size for f in store.glob("*.safetensors"))
    model = args.model if not args.checkpoint else store.name
    env = environment()

    def record(case: str, seconds: float, **extra):
        emit({"bench": "B7", "case": case, "model": model, "seconds": round(seconds, 4), **extra,
              "weights_bytes": weights, **env})
    with Server(str(store), args) as server:
        for case in ("load_cold", "load_warm"):
            for _ in range(args.repeats):
                server.post("unload")
                if case == "load_cold":
                    drop_page_cache(store)
                seconds, entry = server.post("load")
                ttft = server.first_token()
                startup = entry.get("startup_seconds") or {}
                record(case, seconds, first_token_after_s=round(ttft, 4), gb_per_s=round(weights / seconds / 1e9, 3),
                       memory_bytes=entry.get("memory_bytes"), engine_startup_s=startup,
                       weights_gb_per_s=round(weights / startup["weights"] / 1e9, 3) if startup.get("weights") else None)
        for _ in range(args.repeats):
            seconds, entry = server.post("sleep")
            record("sleep", seconds, memory_bytes=entry.get("memory_bytes"))
            record("wake_first_token", server.first_token())
            server.post("sleep")
            seconds, entry = server.post("wake")
            record("wake", seconds, memory_bytes=entry.get("memory_bytes"))


if __name__ == "__main__":
    main()
