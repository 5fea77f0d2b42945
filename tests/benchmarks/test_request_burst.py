"""benchmarks.request_burst: a burst of requests sent from a busy and from an idle event loop reaches a real engine
process, and each trial's time until the engine holds all of them is taken."""
import argparse
import asyncio

from benchmarks.request_burst import burst_times


def test_every_request_of_a_burst_reaches_the_engine_from_a_busy_and_an_idle_loop(tiny_model_dirs):
    args = argparse.Namespace(requests=6, prompt_len=8, gap_ms=1.0, slice_ms=0.2, trials=2)
    for busy in (True, False):
        times = asyncio.run(burst_times(str(tiny_model_dirs["qwen3"]), "cpu", busy, args))
        assert len(times) == 2
        # no sooner than the burst took to send, and long before the test's timeout
        assert all(args.requests * args.gap_ms <= t < 60_000 for t in times)
