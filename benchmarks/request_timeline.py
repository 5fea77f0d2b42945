"""The peer kit's load client (its load_client.py, unchanged), writing each request's own timings besides its
summary, so that a run can be read request by request: which requests got their first token late, and whether
they started late.

    REQUESTS_JSONL=FILE python -m benchmarks.request_timeline PEER [load_client.py's arguments]

`serve_side_by_side.sh` runs its clients so when REQUESTS_JSONL is set. After each rate, one JSON line per
request: the client's `label`, `model` and `rate`, `start_s` (from the rate's first request), `ttft_s`,
`latency_s`, `chunks`, `output_tokens` and `error`; requests in the order they started.
"""
import json
import os
import sys
from pathlib import Path


def main():
    peer, sys.argv = Path(sys.argv[1]), [sys.argv[0], *sys.argv[2:]]
    sys.path.insert(0, str(peer))
    import load_client
    args = load_client.build_parser().parse_args()
    path, summarize, measure = os.environ["REQUESTS_JSONL"], load_client.summarize, load_client.measure
    rate_of = {}

    async def measured(args_, rate, count, seed):
        rate_of["rate"] = str(rate)
        return await measure(args_, rate, count, seed)

    def summarized(results, seconds):
        first = min((r.start for r in results), default=0.0)
        with open(path, "a") as f:
            for r in sorted(results, key=lambda r: r.start):
                f.write(json.dumps({"label": args.label, "model": args.model, "rate": rate_of.get("rate"),
                                    "start_s": round(r.start - first, 4), "ttft_s": round(r.ttft, 4),
                                    "latency_s": round(r.latency, 4), "chunks": r.chunks,
                                    "output_tokens": r.output_tokens, "error": r.error}) + "\n")
        return summarize(results, seconds)

    load_client.summarize, load_client.measure = summarized, measured
    load_client.main()


if __name__ == "__main__":
    main()
