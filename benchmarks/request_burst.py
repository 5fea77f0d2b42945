"""How long a burst of new requests takes to reach an engine from a busy API process: B4's turnaround, when
the first wave ends and the client sends the next while the event loop streams. One engine process (a tiny
model on the CPU by default) behind `EngineProcess`, the API process's end of the pipe; the event loop is kept
busy as streaming keeps it (Python work, yielding every --slice-ms), then --requests AddRequests are sent one
every --gap-ms, as parsed requests would be, and the time until the engine reports holding all of them is
taken, --trials times (the first is a warm-up). Against an idle loop for reference.

    python -c "from tests.tiny_models import build_model as b; b('qwen3', '/tmp/tiny-qwen3')"
    python -m benchmarks.request_burst --model /tmp/tiny-qwen3
"""
import argparse
import asyncio
import statistics
import time

from benchmarks.common import emit, environment
from corral import SamplingParams
from corral.engine.messages import AddRequests, EngineCoreRequest, EngineOutputs, EngineReady


async def burst_times(model: str, device: str, busy: bool, args) -> list[float]:
    from corral.server.engine_process import EngineProcess
    loop = asyncio.get_running_loop()
    ready, held = asyncio.Event(), {"finished": 0, "all_at": None, "start": 0.0}

    def on_message(engine, message):
        if isinstance(message, EngineReady):
            ready.set()
        elif isinstance(message, EngineOutputs):
            held["finished"] += sum(1 for o in message.outputs if o.finish_reason)
            in_engine = held["finished"] + message.stats.num_running + message.stats.num_waiting
            if held["all_at"] is None and in_engine >= args.requests:
                held["all_at"] = time.perf_counter() - held["start"]

    engine = EngineProcess("burst", model, {"device": device, "max_model_len": 256, "max_num_seqs": 256}, 1, 30,
                           loop, on_message)
    await asyncio.to_thread(engine.start)
    await ready.wait()
    streaming = True

    async def stream_load():
        while streaming:
            started = time.perf_counter()
            while time.perf_counter() - started < args.slice_ms / 1000:
                pass
            await asyncio.sleep(0)

    load = asyncio.ensure_future(stream_load()) if busy else None
    times = []
    for trial in range(args.trials):
        held.update(finished=0, all_at=None, start=time.perf_counter())
        for i in range(args.requests):
            prompt = [(i + j) % 100 + 1 for j in range(args.prompt_len)]
            engine.send(AddRequests([EngineCoreRequest(f"{trial}-{i}", prompt, SamplingParams(max_tokens=1),
                                                       frozenset(), time.monotonic())]))
            await asyncio.sleep(args.gap_ms / 1000)
        while held["all_at"] is None or held["finished"] < args.requests:
            await asyncio.sleep(0.001)
        times.append(held["all_at"] * 1000)
    streaming = False
    if load is not None:
        await load
    await asyncio.to_thread(engine.stop, 30)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model folder (a tiny random model will do)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=72, help="B4's second wave")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--gap-ms", type=float, default=1.0, help="between two requests of the burst")
    ap.add_argument("--slice-ms", type=float, default=0.2, help="the busy loop's Python work between yields")
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    for busy in (True, False):
        times = asyncio.run(burst_times(args.model, args.device, busy, args))[1:]
        emit({**environment(), "benchmark": "request-burst", "event_loop": "busy" if busy else "idle",
              "requests": args.requests, "gap_ms": args.gap_ms, "sending_ms": round(args.requests * args.gap_ms, 1),
              "until_all_held_ms": [round(t, 1) for t in times], "median_ms": round(statistics.median(times), 1)})


if __name__ == "__main__":
    main()
