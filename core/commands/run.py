"""corral run MODEL [PROMPT]: Ollama's `run`. With a prompt, its answer streamed to stdout; without, a chat
read from stdin (`/bye` ends it). Through the running server when one answers at --host/--port
(CORRAL_HOST/CORRAL_PORT), else in this process through corral.LLM. Thinking goes to stderr."""
import json
import sys
import time

HELP = "/bye ends the chat, /clear forgets it"


def add_commands(subparsers):
    from corral.server.ollama.client import add_server_flags
    p = subparsers.add_parser("run", help="chat with a model (the running server's, else in this process)")
    p.add_argument("model", help="a served name (with a server), else any reference: qwen3:4b, hf:Org/Name, a path")
    p.add_argument("prompt", nargs="*", help="answer this and exit (default: a chat read from stdin)")
    add_server_flags(p)
    p.add_argument("--format", help='"json", or a JSON schema the answer must match')
    p.add_argument("--think", action="store_true", default=None, help="think first (thinking models)")
    p.add_argument("--no-think", dest="think", action="store_false", default=None, help="answer without thinking")
    p.add_argument("--keepalive", help="how long the server keeps the model loaded afterwards (5m, 0, -1)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-predict", type=int, help="at most this many tokens per answer")
    p.add_argument("--verbose", action="store_true", help="token counts and speed after each answer")
    p.add_argument("--device", help="in this process: cpu or cuda (default: cuda when available)")
    p.add_argument("--max-model-len", type=int, help="in this process: the context length")
    p.set_defaults(handler=run)


def run(args) -> int:
    from corral.server.ollama.client import OllamaAPI
    api = OllamaAPI.from_args(args)
    chat = ServerChat(api, args) if api.running() else LocalChat(args, api.url)
    if args.prompt:
        answer(chat, [{"role": "user", "content": " ".join(args.prompt)}], args.verbose)
        return 0
    messages, interactive = [], sys.stdin.isatty()
    if interactive:
        print(f"corral run {args.model} ({HELP})", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", flush=True)
        text = sys.stdin.readline()
        if not text or text.strip() == "/bye":
            return 0
        text = text.strip()
        if text == "/clear":
            messages = []
        elif text.startswith("/"):
            print(HELP, file=sys.stderr)
        elif text:
            messages.append({"role": "user", "content": text})
            messages.append({"role": "assistant", "content": answer(chat, messages, args.verbose)})


def answer(chat, messages: list[dict], verbose: bool) -> str:
    """Streams one answer (thinking to stderr, the answer to stdout) and returns its text."""
    text, started, tokens = "", time.monotonic(), 0
    for thinking, content, num_tokens in chat.stream(messages):
        if thinking:
            print(thinking, end="", file=sys.stderr, flush=True)
        if content:
            print(content, end="", flush=True)
            text += content
        tokens += num_tokens
    print(flush=True)
    if verbose:
        seconds = time.monotonic() - started
        print(f"eval count: {tokens} token(s)\neval rate: {tokens / max(seconds, 1e-9):.2f} tokens/s", file=sys.stderr)
    return text


def options(args) -> dict:
    named = {"temperature": args.temperature, "seed": args.seed, "num_predict": args.num_predict}
    return {k: v for k, v in named.items() if v is not None}


def output_format(args):
    if args.format is None or args.format == "json":
        return args.format
    try:
        return json.loads(args.format)
    except ValueError:
        from corral.cli import CLIError
        raise CLIError(f'--format must be "json" or a JSON schema, got {args.format!r}') from None


class ServerChat:
    """Through the running server's /api/chat."""

    def __init__(self, api, args):
        self.api, self.model = api, args.model
        self.extra = {k: v for k, v in {"options": options(args), "format": output_format(args), "think": args.think,
                                        "keep_alive": args.keepalive}.items() if v not in (None, {})}

    def stream(self, messages: list[dict]):
        for data in self.api.lines("/api/chat", {"model": self.model, "messages": messages, **self.extra}):
            message = data.get("message") or {}
            yield message.get("thinking"), message.get("content"), data.get("eval_count", 0) if data["done"] else 0


class LocalChat:
    """In this process: the model's engine, its chat template and Qwen3's thinking split, as the server has."""

    def __init__(self, args, url: str):
        from corral.llm import LLM
        from corral.sampling_params import StructuredOutputsParams
        print(f"no server answers at {url}; loading {args.model} in this process", file=sys.stderr)
        self.llm = LLM(args.model, device=args.device, max_model_len=args.max_model_len)
        self.engine = self.llm.engine
        fmt = output_format(args)
        self.grammar = None if fmt is None else (StructuredOutputsParams(json_object=True) if fmt == "json"
                                                 else StructuredOutputsParams(json=fmt))
        self.options, self.think = options(args), args.think
        architectures = self.engine.config.hf_config.get("architectures") or []
        self.reasoning = any(a.lower().startswith("qwen3") for a in architectures)
        self.requests = 0

    def stream(self, messages: list[dict]):
        from corral.sampling_params import SamplingParams
        from corral.server.reasoning import ReasoningParser, prompt_opens_reasoning
        inputs = self.engine.input_processor
        kwargs = {} if self.think is None else {"enable_thinking": self.think}
        prompt = inputs.render_chat(messages, True, kwargs)
        prompt_ids = inputs.tokenize(prompt, add_special_tokens=False)
        values = {**inputs.sampling_defaults, **{k: v for k, v in self.options.items() if k != "num_predict"}}
        max_tokens = inputs.check_prompt(prompt_ids, self.options.get("num_predict"))
        params = SamplingParams(**values, max_tokens=max_tokens, structured_outputs=self.grammar)
        split = (ReasoningParser(prompt_opens_reasoning(prompt) and self.grammar is None) if self.reasoning
                 else None)
        self.requests += 1
        request_id = f"run-{self.requests}"
        self.engine.add_request(request_id, prompt_ids, params, delta=True)
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    for c in out.outputs:
                        thinking, content = split.feed(c.text) if split else ("", c.text)
                        if c.finished and split:
                            more_thinking, more_content = split.flush()
                            thinking, content = thinking + more_thinking, content + more_content
                        yield (thinking if self.think is not False else ""), content, len(c.token_ids)
        finally:
            self.engine.abort_request(request_id)
