"""The peer kit's load client (its load_client.py, unchanged) with two measurement options, for
`serve_side_by_side.sh`:

    REQUESTS_JSONL=FILE KEEPALIVE=0 python -m benchmarks.peer_load_client PEER [load_client.py's arguments]

REQUESTS_JSONL=FILE: after each rate, one JSON line per request, in the order they started: the client's
`label`, `model` and `rate`, `start_s` (from the rate's first request), `sent_at` (the same start on the wall
clock, Unix seconds, to set beside a server's `--step-log`), `ttft_s`, `latency_s`, `chunks`, `output_tokens` and
`error`.

KEEPALIVE=0: each request on a connection of its own, closed after it. With the kit's pool of kept-alive
connections, requests that start as earlier ones finish can wait in httpx's pool before they are sent: on a
2-core CPU, against a stand-in server that answers in 50 ms, B4's 200 requests at 128 in flight took 3.5-3.7 s
with TTFT p99 2.4-2.7 s, every late one waiting for a connection, and 1.0 s with TTFT p99 0.17-0.18 s without
keep-alive (aiohttp: 0.9 s, 0.14 s).
"""
import json
import os
import sys
import time
from pathlib import Path


def main():
    peer, sys.argv = Path(sys.argv[1]), [sys.argv[0], *sys.argv[2:]]
    sys.path.insert(0, str(peer))
    import load_client
    args = load_client.build_parser().parse_args()
    if os.environ.get("KEEPALIVE") == "0":
        from benchmarks.serving import new_client  # corral's own client's: a connection per request
        load_client.new_client = new_client
    if path := os.environ.get("REQUESTS_JSONL"):
        summarize, measure, rate_of = load_client.summarize, load_client.measure, {}

        async def measured(args_, rate, count, seed):
            rate_of["rate"] = str(rate)
            return await measure(args_, rate, count, seed)

        def summarized(results, seconds):
            first = min((r.start for r in results), default=0.0)
            wall_offset = time.time() - time.perf_counter()  # the kit's client times with perf_counter
            with open(path, "a") as f:
                for r in sorted(results, key=lambda r: r.start):
                    f.write(json.dumps({"label": args.label, "model": args.model, "rate": rate_of.get("rate"),
                                        "start_s": round(r.start - first, 4),
                                        "sent_at": round(r.start + wall_offset, 6), "ttft_s": round(r.ttft, 4),
                                        "latency_s": round(r.latency, 4), "chunks": r.chunks,
                                        "output_tokens": r.output_tokens, "error": r.error}) + "\n")
            return summarize(results, seconds)

        load_client.summarize, load_client.measure = summarized, measured
    load_client.main()


if __name__ == "__main__":
    main()
