import random
from dataclasses import dataclass, field

import torch

from corral.engine.request import Request
from corral.engine.token_history import TokenHistory

GREEDY_EPS = 1e-5


@dataclass(slots=True)
class SamplingMetadata:
    """One step's sampling parameters as [B] tensors, row i for requests[i].

    Optional fields are None when no row uses them, so the sampler skips that work. Logit bias and
    min_tokens are sparse (row, token) pairs: `logit_bias_index` [2, N] with `logit_bias` [N], and
    `min_tokens_index` [2, M] for the stop tokens to mask.
    """

    temperature: torch.Tensor
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    repetition_penalty: torch.Tensor | None = None
    presence_penalty: torch.Tensor | None = None
    frequency_penalty: torch.Tensor | None = None
    # penalties: each row's token ids so far ([B, L]: the prompt's first, then the outputs'; ids past
    # num_tokens are not the row's), from the host or from the device's TokenHistory
    penalty_token_ids: torch.Tensor | None = None
    prompt_lens: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    history_rows: list[int] | None = None  # each row's TokenHistory row, where the sampled token goes
    logit_bias_index: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None
    min_tokens_index: torch.Tensor | None = None
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    max_num_logprobs: int | None = None
    grammar_bitmask: torch.Tensor | None = None  # [B, ceil(V / 32)] int32: bit t of row i allows token t
    grammar_rows: list[int] | None = None  # the rows it constrains
    grammar_vocab_size: int | None = None  # the tokens the bitmask covers; the logits past them are no token

    @classmethod
    def build(cls, requests: list[Request], vocab_size: int, device: torch.device,
              num_tokens: list[int] | None = None, history: TokenHistory | None = None) -> "SamplingMetadata":
        """`num_tokens`: each row's tokens so far, the one it samples after (default: those the host
        has; a step launched ahead of the host has one more). With `history`, penalties read the ids
        on the device, where the sampler left the last one."""
        num_tokens = [r.num_tokens for r in requests] if num_tokens is None else num_tokens
        params = [r.sampling_params for r in requests]
        greedy = [p.greedy for p in params]
        rows = list(zip(params, greedy))

        def optional(values, unused, dtype):
            if all(v == unused for v in values):
                return None
            return _tensor(values, dtype, device)

        repetition = optional([p.repetition_penalty for p in params], 1.0, torch.float32)
        presence = optional([p.presence_penalty for p in params], 0.0, torch.float32)
        frequency = optional([p.frequency_penalty for p in params], 0.0, torch.float32)
        any_penalty = repetition is not None or presence is not None or frequency is not None

        bias = [(i, t, v) for i, p in enumerate(params) for t, v in p.logit_bias.items() if t < vocab_size]
        masked = [(i, t) for i, (r, n) in enumerate(zip(requests, num_tokens))
                  if n - r.num_prompt_tokens < r.sampling_params.min_tokens
                  for t in _stop_token_ids(r) if t < vocab_size]
        penalty = cls._penalty_tokens(requests, num_tokens, params, history, device) if any_penalty else (None,) * 4

        generators = {}
        for i, (r, g) in enumerate(zip(requests, greedy)):
            if r.sampling_params.seed is not None and not g:
                if r.generator is None:
                    r.generator = torch.Generator(device=device).manual_seed(r.sampling_params.seed)
                generators[i] = r.generator

        wanted = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=_tensor([0.0 if g else p.temperature for p, g in rows], torch.float32, device),
            all_greedy=all(greedy),
            all_random=not any(greedy),
            top_k=optional([0 if g else min(p.top_k, vocab_size) for p, g in rows], 0, torch.int64),
            top_p=optional([1.0 if g else p.top_p for p, g in rows], 1.0, torch.float32),
            min_p=optional([0.0 if g else p.min_p for p, g in rows], 0.0, torch.float32),
            repetition_penalty=repetition,
            presence_penalty=presence,
            frequency_penalty=frequency,
            penalty_token_ids=penalty[0], prompt_lens=penalty[1], num_tokens=penalty[2], history_rows=penalty[3],
            logit_bias_index=(_tensor([[i for i, _, _ in bias], [t for _, t, _ in bias]], torch.int64, device)
                              if bias else None),
            logit_bias=_tensor([v for _, _, v in bias], torch.float32, device) if bias else None,
            min_tokens_index=_tensor(list(zip(*masked)), torch.int64, device) if masked else None,
            generators=generators,
            max_num_logprobs=max(wanted) if wanted else None,
        )

    @staticmethod
    def _penalty_tokens(requests, num_tokens, params, history, device):
        penalized = [p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
                     for p in params]
        prompt_lens = [r.num_prompt_tokens if wanted else 0 for r, wanted in zip(requests, penalized)]
        lens = [n if wanted else 0 for n, wanted in zip(num_tokens, penalized)]
        rows = None
        if history is None:
            if any(n > r.num_tokens for r, n in zip(requests, lens)):
                raise RuntimeError("a penalized step launched before the host has its tokens needs a TokenHistory")
            ids = _padded([r.all_token_ids[:n] for r, n in zip(requests, lens)], 0, device)
        else:
            rows = history.rows(requests, num_tokens, penalized)
            ids = history.tokens[_tensor(rows, torch.int64, device), :max(lens)].long()
        return ids, _tensor(prompt_lens, torch.int64, device), _tensor(lens, torch.int64, device), rows


@dataclass(slots=True)
class SamplerOutput:
    """`logprob_token_ids`/`logprobs` are [B, K+1]: column 0 the sampled token, then the top K."""

    sampled_token_ids: torch.Tensor
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    sampled_ranks: torch.Tensor | None = None


class Sampler:
    """Picks one token per row in vLLM v1's order: logprobs of the raw logits; logit bias,
    min_tokens and penalties (`process_logits`); argmax for greedy rows; temperature, min-p,
    top-k and top-p (`truncate_logits`) and an exponential race for the others. On CUDA, rows that
    need only a temperature are sampled by one Triton pass (Gumbel-max) seeded from `seed`."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        if metadata.grammar_bitmask is not None:
            apply_grammar_bitmask(logits, metadata.grammar_bitmask, metadata.grammar_rows,
                                  metadata.grammar_vocab_size or logits.shape[-1])
        logits = process_logits(logits, metadata)
        if self._one_pass(logits, metadata):
            from corral.kernels.sampling import gumbel_argmax
            sampled = gumbel_argmax(logits, metadata.temperature, self.rng.getrandbits(31), GREEDY_EPS)
        else:
            sampled = _sample(logits, metadata)
        if raw_logprobs is None:
            return SamplerOutput(sampled)
        return SamplerOutput(sampled, *gather_logprobs(raw_logprobs, sampled, metadata.max_num_logprobs))

    @staticmethod
    def _one_pass(logits: torch.Tensor, md: SamplingMetadata) -> bool:
        return (logits.is_cuda and not md.all_greedy and md.top_k is None and md.top_p is None
                and md.min_p is None and not md.generators and logits.numel() < 2**31)


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], vocab_size: int):
    """Tokens a row's grammar does not allow become -inf, in place (xgrammar's kernel on the GPU): those
    the bitmask's first `vocab_size` bits forbid, and every logit past them (the model's padding ids)."""
    from xgrammar import apply_token_bitmask_inplace
    every_row = len(rows) == logits.shape[0]
    apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=None if every_row else rows)
    if vocab_size < logits.shape[-1]:
        logits[slice(None) if every_row else rows, vocab_size:] = float("-inf")


def process_logits(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Logit bias, min_tokens masking and penalties on a float32 copy; `logits` itself when none apply."""
    md = metadata
    if md.logit_bias is None and md.min_tokens_index is None and md.penalty_token_ids is None:
        return logits
    logits = logits.to(torch.float32, copy=True)
    if md.logit_bias is not None:
        logits.index_put_(tuple(md.logit_bias_index), md.logit_bias, accumulate=True)
    if md.min_tokens_index is not None:
        rows, tokens = md.min_tokens_index
        kept = logits[rows, tokens] if md.grammar_bitmask is not None else None
        logits[rows, tokens] = float("-inf")
        if kept is not None:  # a grammar that can only end ends the request, min_tokens or not
            ended = (logits == float("-inf")).all(dim=-1)[rows]
            logits[rows, tokens] = torch.where(ended, kept, float("-inf"))
    if md.penalty_token_ids is not None:
        logits = apply_penalties(logits, md)
    return logits


def apply_penalties(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Repetition penalty over prompt and output tokens (HF/vLLM: divide positive logits, multiply
    the others), then frequency and presence penalties over output tokens."""
    md = metadata
    num_rows, vocab_size = logits.shape
    column = torch.arange(md.penalty_token_ids.shape[1], device=logits.device)
    in_prompt = column < md.prompt_lens[:, None]
    taken = column < md.num_tokens[:, None]
    outputs = torch.where(taken & ~in_prompt, md.penalty_token_ids, vocab_size)  # vocab_size: no token
    counts = torch.zeros(num_rows, vocab_size + 1, dtype=torch.int64, device=logits.device)
    counts = counts.scatter_add_(1, outputs, torch.ones_like(outputs))[:, :vocab_size]
    if md.repetition_penalty is not None:
        prompt = torch.where(taken & in_prompt, md.penalty_token_ids, vocab_size)
        seen = torch.zeros(num_rows, vocab_size + 1, dtype=torch.bool, device=logits.device)
        seen = seen.scatter_(1, prompt, True)[:, :vocab_size] | (counts > 0)
        penalty = torch.where(seen, md.repetition_penalty[:, None], 1.0)
        logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    if md.frequency_penalty is not None:
        logits = logits - md.frequency_penalty[:, None] * counts
    if md.presence_penalty is not None:
        logits = logits - md.presence_penalty[:, None] * (counts > 0)
    return logits


def truncate_logits(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Temperature, then min-p, top-k and top-p (vLLM v1 order); tokens outside a row's support
    become -inf. Greedy rows are left at temperature 1 and untruncated."""
    md = metadata
    temperature = torch.where(md.temperature < GREEDY_EPS, 1.0, md.temperature)
    logits = logits.float() / temperature[:, None]
    if md.min_p is not None:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < md.min_p[:, None] * probs.amax(dim=-1, keepdim=True), float("-inf"))
    if md.top_k is None and md.top_p is None:
        return logits
    vocab_size = logits.shape[-1]
    ascending, order = logits.sort(dim=-1)
    if md.top_k is not None:
        k = torch.where(md.top_k > 0, md.top_k, vocab_size).clamp(max=vocab_size)
        kth = ascending.gather(1, (vocab_size - k)[:, None])
        ascending = ascending.masked_fill(ascending < kth, float("-inf"))
    if md.top_p is not None:
        mass_up_to = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = mass_up_to <= 1 - md.top_p[:, None]
        drop[:, -1] = False
        ascending = ascending.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ascending)


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor,
                    num_logprobs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([B, K+1] ids, [B, K+1] logprobs, [B] ranks): the sampled token first, then the top K."""
    token_logprobs = logprobs.gather(1, token_ids[:, None])
    ranks = (logprobs >= token_logprobs).sum(dim=-1)
    top_logprobs, top_ids = logprobs.topk(num_logprobs, dim=-1)
    return torch.cat([token_ids[:, None], top_ids], 1), torch.cat([token_logprobs, top_logprobs], 1), ranks


def _sample(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    greedy = None if md.all_random else logits.argmax(dim=-1)
    if md.all_greedy:
        return greedy
    probs = truncate_logits(logits, md).softmax(dim=-1)
    sampled = _exponential_race(probs, md.generators)
    return sampled if greedy is None else torch.where(md.temperature < GREEDY_EPS, greedy, sampled)


def _exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    # argmax(p / Exp(1)) is a draw from p; seeded rows take their noise from their own generator
    noise = torch.empty_like(probs)
    if len(generators) < probs.shape[0]:
        noise.exponential_()
    for row, generator in generators.items():
        noise[row].exponential_(generator=generator)
    return probs.div_(noise).argmax(dim=-1)


def _stop_token_ids(request: Request) -> set[int]:
    params = request.sampling_params
    eos = () if params.ignore_eos else request.eos_token_ids
    return set(params.stop_token_ids).union(eos)


def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return _tensor([list(r) + [pad] * (width - len(r)) for r in rows], torch.int64, device)


def _tensor(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # a blocking host-to-device copy would wait for every step already queued on the device
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
