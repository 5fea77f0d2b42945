"""B4 (online serving through the OpenAI API) and B6 (two models on one GPU): a real `corral serve`
subprocess on loopback with random weights, driven by streaming /v1/completions requests of random
token ids (ignore_eos) arriving as a Poisson process.

    python -m benchmarks.serving --model qwen3-4b
    python -m benchmarks.serving --models qwen3-4b,llama-2-7b      # B6: each alone, then both at once
    python -m benchmarks.serving --model DIR --device cpu --num-requests 8 --rates 4,inf   # smoke test
    python -m benchmarks.serving --model qwen3-4b --emulated-engine --rates inf --gc-pauses gc.txt  # no GPU

The server streams text, so it needs a tokenizer, and the real ones are not available offline. The
model directory gets a word-level one: token id i is the word "t<i>", for every id below vocab_size.
The same Rust `tokenizers` library decodes it as decodes a real one, and every token decodes to text
of its own, so a chunk holds exactly the tokens one engine message delivered: inter-token latency is the gap
between chunks, as clients see it (with multi-step decode a chunk may hold several tokens; see
tokens_per_chunk), and TPOT is (latency - TTFT) / (output tokens - 1), as vLLM's benchmark has them.
In B6, "alone" means the other model is loaded (same memory share) but gets no requests.

--emulated-engine puts benchmarks/emulated_engine on the server's PYTHONPATH: its engine processes schedule as
the engine does but sleep each step for what it takes Qwen3-4B on an H100, so the API process and the client
meet B4's load on a machine without a GPU (only the engine is emulated: HTTP, tokenizer, detokenizer, pipe and
streaming are the server's own). --gc-pauses FILE records each full garbage collection of the server's processes.
"""
import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import emit, environment, model_dir
from benchmarks.served_models import memory_budget


def prepare_model(name: str) -> str:
    """A directory with config.json (a benchmark config by name, or a given directory) and a tokenizer."""
    path = Path(name) if Path(name).is_dir() else Path(model_dir(name))
    vocab_size = json.loads((path / "config.json").read_text())["vocab_size"]
    marker = path / "bench_tokenizer_vocab"
    if not marker.is_file() or marker.read_text() != str(vocab_size):
        from tokenizers import Tokenizer, models, pre_tokenizers
        tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        marker.write_text(str(vocab_size))
    return str(path)


class Server:
    """`corral serve --config FILE` as a subprocess on a free loopback port; SIGTERM on exit."""

    def __init__(self, models: dict[str, str], args, memory_share: float | None, server: dict | None = None,
                 env: dict | None = None, **model_settings):
        """`server`: [server] settings (memory_budget_bytes, eviction, ...); `env`: added to the process's
        environment; `model_settings` override each model's defaults (dummy weights, memory_share of the GPU;
        None leaves a setting out)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        lines = ["[server]", 'host = "127.0.0.1"', f"port = {self.port}", *toml_pairs(server or {})]
        settings = dict(dict(load_format="dummy", reasoning_parser="none", max_model_len=args.max_model_len,
                             gpu_memory_utilization=memory_share, max_queue_len=1024, device=args.device),
                        **model_settings)
        for name, path in models.items():
            lines += [f"[models.{json.dumps(name)}]", f"model = {json.dumps(path)}", *toml_pairs(settings)]
        self.config = Path(tempfile.mkdtemp(prefix="corral-serve-")) / "serve.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.models = list(models)
        self.process = subprocess.Popen([sys.executable, "-m", "corral.cli", "--log-level", "WARNING", "serve",
                                         "--config", str(self.config)], env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float, models: list[str] | None = None):
        """Until `models` (default: all) are ready; [] waits only for the server to answer."""
        models = self.models if models is None else models
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corral serve exited with {self.process.returncode} before it was ready")
            try:
                states = httpx.get(f"{self.url}/health", timeout=5).json()["models"]
                if any(m["state"] == "error" for m in states.values()):
                    raise RuntimeError(f"a model failed to load: {states}")
                if all(states[m]["state"] == "ready" for m in models):
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server was not ready within {timeout:.0f} s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.config.parent, ignore_errors=True)


def toml_pairs(settings: dict) -> list[str]:
    """`key = value` lines (strings, numbers, booleans: JSON writes them as TOML does); None left out."""
    return [f"{key} = {json.dumps(value)}" for key, value in settings.items() if value is not None]


@dataclass(slots=True)
class Result:
    start: float
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)
    error: str | None = None


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], max_tokens: int) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    result = Result(time.perf_counter())
    last = None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now, chunk = time.perf_counter(), json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"].get("message")
                    return result
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    if last is None:
                        result.ttft = now - result.start
                    else:
                        result.itl.append(now - last)
                    last = now
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    result.latency = time.perf_counter() - result.start
    if result.error is None and (last is None or result.output_tokens != max_tokens):
        result.error = f"{result.output_tokens} of {max_tokens} tokens"
    return result


def run(coroutine):
    """asyncio.run, on uvloop where it is installed (the client must not be the bottleneck)."""
    try:
        from uvloop import run as uvloop_run
    except ImportError:  # no uvloop, or one older than 0.18
        return asyncio.run(coroutine)
    return uvloop_run(coroutine)


def make_prompts(n: int, args, seed: int) -> list[list[int]]:
    """Random ids in 0..10000, fresh per run (seeded apart): the prefix cache never serves one run's prompts
    to another."""
    rng = random.Random(seed)
    return [[rng.randint(0, args.max_token_id) for _ in range(args.input_len)] for _ in range(n)]


async def run_load(client, url: str, model: str, prompts, max_tokens: list[int], rate: float, max_concurrency: int,
                   seed: int) -> list[Result]:
    rng, limit, tasks = random.Random(seed), asyncio.Semaphore(max_concurrency), []

    async def limited(prompt, n):
        async with limit:
            return await one_request(client, url, model, prompt, n)

    for prompt, n in zip(prompts, max_tokens):
        tasks.append(asyncio.create_task(limited(prompt, n)))
        if math.isfinite(rate):
            await asyncio.sleep(rng.expovariate(rate))
    return await asyncio.gather(*tasks)


def summarize(results: list[Result], seconds: float) -> dict:
    ok = [r for r in results if r.error is None]
    if not ok:
        raise RuntimeError(f"every request failed; first error: {results[0].error}")
    ms = lambda values, q: round(float(np.percentile(values, q)) * 1000, 2) if len(values) else None
    ttft = [r.ttft for r in ok]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itl = [gap for r in ok for gap in r.itl]
    out = sum(r.output_tokens for r in ok)
    e2e = [r.latency for r in ok]
    return {"completed": len(ok), "failed": len(results) - len(ok),
            "first_error": next((r.error for r in results if r.error), None), "seconds": round(seconds, 2),
            "requests_s": round(len(ok) / seconds, 2), "output_tok_s": round(out / seconds, 1),
            "ttft_ms_mean": round(float(np.mean(ttft)) * 1000, 2), "ttft_ms_p50": ms(ttft, 50),
            "ttft_ms_p99": ms(ttft, 99), "tpot_ms_mean": round(float(np.mean(tpot)) * 1000, 2) if tpot else None,
            "tpot_ms_p50": ms(tpot, 50), "tpot_ms_p99": ms(tpot, 99), "itl_ms_p50": ms(itl, 50),
            "itl_ms_p99": ms(itl, 99), "e2e_ms_p50": ms(e2e, 50), "e2e_ms_p99": ms(e2e, 99),
            "tokens_per_chunk": round(out / sum(len(r.itl) + 1 for r in ok), 2)}


def new_client() -> httpx.AsyncClient:
    """Each request on a connection of its own: reusing kept-alive connections, requests that start as others
    finish can wait in httpx's pool before they are sent (benchmarks/peer_load_client.py has the figures)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    return httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits)


async def measure(url: str, models: list[str], rate: float, count: int, args, seed: int) -> dict[str, dict]:
    """One load per model, all at once; returns each model's summary (and the client's CPU share)."""
    async with new_client() as client:
        cpu, start = time.process_time(), time.perf_counter()

        async def load(i, model):
            prompts = make_prompts(count, args, seed * 100 + i)
            results = await run_load(client, url, model, prompts, [args.output_len] * count, rate,
                                     args.max_concurrency, seed + i)
            return summarize(results, time.perf_counter() - start)

        summaries = await asyncio.gather(*(load(i, m) for i, m in enumerate(models)))
        client_cpu = (time.process_time() - cpu) / (time.perf_counter() - start)
    return {m: dict(s, client_cpu_fraction=round(client_cpu, 2)) for m, s in zip(models, summaries)}


async def warm_up(url: str, model: str, args):
    """Compiles the Triton specializations the runs will meet: 48 requests of 1..48 output tokens at once."""
    async with new_client() as client:
        results = await run_load(client, url, model, make_prompts(48, args, 999),
                                 [n + 1 for n in range(48)], math.inf, 48, 0)
    if errors := [r.error for r in results if r.error]:
        raise RuntimeError(f"warm-up failed: {errors[0]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="B4: a benchmark config name or a model directory")
    ap.add_argument("--models", help="B6: two or more, comma-separated, served together")
    ap.add_argument("--rates", default="1,4,16,inf", help="requests/s per model, comma-separated; inf: all at once")
    ap.add_argument("--num-requests", type=int, default=200, help="requests per rate at most")
    ap.add_argument("--seconds-per-rate", type=float, default=30, help="finite rates send rate x this many (>= 32)")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-concurrency", type=int, default=128, help="requests in flight per model at most")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--device", help="cpu or cuda (default: the server's choice)")
    ap.add_argument("--startup-timeout", type=float, default=900)
    ap.add_argument("--emulated-engine", action="store_true",
                    help="engines that sleep each step for what it takes Qwen3-4B on an H100 "
                         "(benchmarks/emulated_engine): the API process and the client measured on any machine")
    ap.add_argument("--kv-sharing", choices=("static", "elastic"), default="static",
                    help="B6: elastic serves the models under one memory budget (--memory-budget, default 0.9 of "
                         "the GPU) whose KV pages a busy model borrows from another that needs fewer")
    ap.add_argument("--memory-budget", help="with --kv-sharing elastic, e.g. 70GiB (needed on CPU)")
    ap.add_argument("--gc-pauses", metavar="FILE",
                    help="append each full garbage collection of the server's processes to FILE (pid, time, ms)")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else [args.model or "qwen3-4b"]
    benchmark = "B6" if len(names) > 1 else "B4"
    rates = [float(r) for r in args.rates.split(",")]
    dirs = {Path(n).name if Path(n).is_dir() else n: prepare_model(n) for n in names}
    models = list(dirs)
    vocab_sizes = [json.loads((Path(d) / "config.json").read_text())["vocab_size"] for d in dirs.values()]
    args.max_token_id = min(10000, min(vocab_sizes) - 1)
    env = {}
    if args.emulated_engine or args.gc_pauses:
        hooks = str(Path(__file__).parent / "emulated_engine")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [hooks, os.environ.get("PYTHONPATH")]))
    if args.emulated_engine:
        env["CORRAL_EMULATED_ENGINE"], args.device = "1", "cpu"
    if args.gc_pauses:
        env["CORRAL_GC_PAUSES"] = str(Path(args.gc_pauses).resolve())
    server_settings = {}
    if args.kv_sharing == "elastic":
        server_settings = dict(memory_budget_bytes=memory_budget(args.memory_budget, args.device, 0.9),
                               kv_sharing="elastic")
    with Server(dirs, args, 0.9 / len(models), server_settings, env=env) as server:
        started = time.perf_counter()
        server.wait_ready(args.startup_timeout)
        print(f"server ready in {time.perf_counter() - started:.0f} s", flush=True)
        for model in models:
            run(warm_up(server.url, model, args))
        base = dict(environment(), benchmark=benchmark, input_len=args.input_len, output_len=args.output_len,
                    max_concurrency=args.max_concurrency, served_together=models, kv_sharing=args.kv_sharing)
        for k, rate in enumerate(rates):
            count = args.num_requests if math.isinf(rate) else \
                min(args.num_requests, max(32, round(rate * args.seconds_per_rate)))
            run_rate(server.url, models, rate, count, args, dict(base, rate=str(rate), num_requests=count), 10 * k)


def run_rate(url: str, models: list[str], rate: float, count: int, args, base: dict, seed: int):
    """One model: its load. Several: each one's load alone (the others idle), then all at once."""
    alone = {}
    for i, model in enumerate(models if len(models) > 1 else []):
        alone[model] = run(measure(url, [model], rate, count, args, seed + i + 1))[model]
        emit(dict(base, model=model, mode="alone", **alone[model]))
    together = run(measure(url, models, rate, count, args, seed + 9))
    for model, summary in together.items():
        if alone:
            summary["vs_alone_output_tok_s"] = round(summary["output_tok_s"] / alone[model]["output_tok_s"], 3)
        emit(dict(base, model=model, mode="together" if alone else "alone", **summary))
    if alone:
        total, total_alone = (sum(s["output_tok_s"] for s in d.values()) for d in (together, alone))
        emit(dict(base, model="+".join(models), mode="aggregate", output_tok_s=round(total, 1),
                  sum_alone_output_tok_s=round(total_alone, 1), vs_sum_alone=round(total / total_alone, 3)))


if __name__ == "__main__":
    main()
