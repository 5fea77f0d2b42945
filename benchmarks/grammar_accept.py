"""What a grammar's matcher costs per token as an output grows: a valid output of each of B1's constrained
schemas (benchmarks.throughput.B1_SCHEMAS) fed to one matcher token by token, as the scheduler's update
does, with the mean microseconds per token of each window of 200 tokens. With --vocab-size past the
tokenizer's length (B1's Qwen3 folders: 151936 logits, SmolLM2's 49152 tokens) and --table-at-logits-width,
xgrammar's token table is built at the logits' width as vLLM builds it, not at the tokenizer's as corral does.

    python -m benchmarks.grammar_accept --model .bench_tokenizer --vocab-size 151936 [--table-at-logits-width]
"""
import argparse
import statistics
import time

from benchmarks.common import emit, environment
from benchmarks.throughput import B1_SCHEMAS

OUTPUTS = {  # the start of a valid output of each schema
    "text": '{"text": "' + " ".join(["lorem ipsum dolor sit amet, consectetur adipiscing elit"] * 200),
    "array": "[" + ", ".join(str(i % 100) for i in range(2000)),
}
WINDOW = 200


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=".bench_tokenizer", help="a folder with a tokenizer, or a manifest name")
    p.add_argument("--tokens", type=int, default=1200, help="tokens fed to each matcher")
    p.add_argument("--vocab-size", type=int, help="the logits' width (default: the tokenizer's length)")
    p.add_argument("--table-at-logits-width", action="store_true")
    args = p.parse_args(argv)

    from corral.engine.structured_output import StructuredOutputCompiler
    from corral.engine.tokenizer import eos_token_ids, load_tokenizer
    from corral.registry.sources import local_model_dir, resolve_model
    from corral.sampling_params import StructuredOutputsParams
    model_dir = local_model_dir(args.model) or resolve_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    compiler = StructuredOutputCompiler(tokenizer, args.vocab_size or len(tokenizer),
                                        list(eos_token_ids(model_dir, tokenizer)))
    if args.table_at_logits_width:
        import xgrammar as xgr
        compiler.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=args.vocab_size)
        compiler.compiler = xgr.GrammarCompiler(compiler.info)
    for name, schema in B1_SCHEMAS.items():
        token_ids = tokenizer.encode(OUTPUTS[name], add_special_tokens=False)[:args.tokens]
        matcher = compiler.matcher(StructuredOutputsParams(json=schema))
        seconds = []
        for token_id in token_ids:
            start = time.perf_counter()
            if not matcher.accept_token(token_id):
                raise SystemExit(f"the {name} schema's matcher refused token {len(seconds)}")
            seconds.append(time.perf_counter() - start)
        windows = [round(statistics.mean(seconds[i:i + WINDOW]) * 1e6, 1) for i in range(0, len(seconds), WINDOW)]
        emit({**environment(), "benchmark": "grammar_accept", "model": args.model, "schema": name,
              "tokenizer_size": len(tokenizer), "table_size": compiler.info.vocab_size,
              "window_tokens": WINDOW, "us_per_token": windows})


if __name__ == "__main__":
    main()
