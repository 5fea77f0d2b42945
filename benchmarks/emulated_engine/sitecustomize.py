"""Put on PYTHONPATH of `corral serve` (benchmarks/serving.py --emulated-engine does), for measuring the API
process without a GPU. Python runs this file at the start of the server and of each engine process it spawns.

CORRAL_EMULATED_ENGINE=1: each engine process runs EmulatedCore in place of the engine. EmulatedCore schedules
as the engine does for B4: running decodes first, then whole prompts within 8,192 tokens. It sleeps each step
for what that step takes Qwen3-4B on an H100: 12 us per prompt token, plus 4 ms, plus 55 us per running
request. Those figures are fitted to the step log of 2026-12-07. Sleeping leaves the CPU to the API process and
the client, as a GPU does, and every request still gets one random token per step until max_tokens.

CORRAL_GC_PAUSES=FILE: every process appends a line per full (generation 2) garbage collection to FILE: its pid,
the wall time, and the milliseconds the collection stopped that process for.
"""
import os

if os.environ.get("CORRAL_EMULATED_ENGINE") == "1":
    import random
    import time
    from types import SimpleNamespace

    import corral.engine.sleep
    import corral.server.engine_process
    from corral.engine.messages import EngineMemory, SchedulerStats, StartupTimes
    from corral.outputs import EngineCoreOutput

    STEP_TOKENS, PER_PROMPT_TOKEN_S, PER_STEP_S, PER_RUNNING_S = 8192, 12e-6, 4e-3, 55e-6

    class EmulatedCore:
        def __init__(self, model_dir: str, engine_args: dict):
            import json
            from pathlib import Path
            vocab_size = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
            self.config = SimpleNamespace(max_model_len=engine_args.get("max_model_len", 4096), block_size=16,
                                          step_log=engine_args.get("step_log"))
            self.model_config = SimpleNamespace(vocab_size=vocab_size)
            self.num_blocks, self.startup = 1 << 20, StartupTimes()
            self.waiting, self.running = [], []  # running: [request, tokens so far]
            self.rng = random.Random(0)

        def add_request(self, request):
            self.waiting.append(request)

        def abort_requests(self, request_ids):
            ids = set(request_ids)
            self.waiting = [r for r in self.waiting if r.request_id not in ids]
            self.running = [e for e in self.running if e[0].request_id not in ids]

        def has_unfinished_requests(self) -> bool:
            return bool(self.waiting or self.running)

        def step(self) -> list[EngineCoreOutput]:
            budget, admitted = STEP_TOKENS - len(self.running), []
            while self.waiting and budget >= len(self.waiting[0].prompt_token_ids):
                request = self.waiting.pop(0)
                budget -= len(request.prompt_token_ids)
                admitted.append([request, 0])
            prompt_tokens = sum(len(r.prompt_token_ids) for r, _ in admitted)
            time.sleep(PER_PROMPT_TOKEN_S * prompt_tokens + PER_STEP_S + PER_RUNNING_S * len(self.running))
            self.running += admitted
            outputs, left = [], []
            for entry in self.running:
                entry[1] += 1
                done = entry[1] >= entry[0].sampling_params.max_tokens
                token = self.rng.randrange(self.model_config.vocab_size)
                outputs.append(EngineCoreOutput(entry[0].request_id, [token], finish_reason="length" if done else None))
                if not done:
                    left.append(entry)
            self.running = left
            return outputs

        def stats(self) -> SchedulerStats:
            return SchedulerStats(num_running=len(self.running), num_waiting=len(self.waiting))

        def shutdown(self):
            pass

    corral.server.engine_process._build_core = \
        lambda model_dir, engine_args, num_threads, on_worker_failure=None: EmulatedCore(model_dir, engine_args)
    corral.engine.sleep.memory_held = lambda core: EngineMemory()

if os.environ.get("CORRAL_GC_PAUSES"):
    import gc
    import time

    class GCPauses:
        def __init__(self, path: str):
            self.path, self.started = path, None

        def __call__(self, phase: str, info: dict):
            if info["generation"] != 2:
                return
            if phase == "start":
                self.started = time.perf_counter()
            elif self.started is not None:
                with open(self.path, "a") as f:
                    f.write(f"{os.getpid()} {time.time():.3f} {(time.perf_counter() - self.started) * 1e3:.1f}\n")

    gc.callbacks.append(GCPauses(os.environ["CORRAL_GC_PAUSES"]))
