import sys

from corral.sampling_params import SamplingParams


def add_commands(subparsers):
    parser = subparsers.add_parser("generate", help="generate text offline, in this process")
    parser.add_argument("model", help="a model directory or reference (e.g. smollm2-135m-instruct)")
    parser.add_argument("prompt", nargs="+", help="one or more prompts")
    parser.add_argument("--chat", action="store_true", help="treat each prompt as a user chat message")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(handler=generate)


def generate(args) -> int:
    from corral.cli import require_device
    from corral.llm import LLM
    require_device(args.device)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    llm = LLM(args.model, dtype=args.dtype, max_model_len=args.max_model_len, device=args.device)
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params)
    else:
        outputs = llm.generate(args.prompt, params)
    for prompt, output in zip(args.prompt, outputs):
        completion = output.outputs[0]
        print(f"> {prompt}\n{completion.text}\n[{len(completion.token_ids)} tokens, {completion.finish_reason}]",
              file=sys.stdout)
    return 0
