import math
from collections import Counter

import pytest
import torch

from corral.engine.request import Request
from corral.engine.sampler import (Sampler, SamplingMetadata, process_logits,
                                   truncate_logits)
from corral.sampling_params import SamplingParams

VOCAB = 64
CPU = torch.device("cpu")


def make_request(prompt=(1, 2, 3), output=(), eos=(), **params) -> Request:
    return Request("r", list(prompt), SamplingParams(**params), eos_token_ids=frozenset(eos),
                   output_token_ids=list(output))


def random_logits(rows: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def sample(requests, logits):
    return Sampler()(logits, SamplingMetadata.build(requests, logits.shape[1], CPU))


# Reference: one row at a time, float64, written from the definitions rather than from the sampler.

def reference_processed_logits(row: torch.Tensor, request: Request) -> torch.Tensor:
    params = request.sampling_params
    x = [float(v) for v in row]
    for token, bias in params.logit_bias.items():
        x[token] += bias
    if len(request.output_token_ids) < params.min_tokens:
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(request.eos_token_ids))
        for token in stops:
            x[token] = -math.inf
    for token in set(request.prompt_token_ids) | set(request.output_token_ids):
        p = params.repetition_penalty
        x[token] = x[token] / p if x[token] > 0 else x[token] * p
    for token, count in Counter(request.output_token_ids).items():
        x[token] -= params.frequency_penalty * count + params.presence_penalty
    return torch.tensor(x, dtype=torch.float64)


def reference_probs(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    probs = torch.softmax(row.double() / params.temperature, dim=0)
    if params.min_p > 0:
        probs = normalised(torch.where(probs >= params.min_p * probs.max(), probs, 0.0))
    ranked = sorted(range(len(probs)), key=lambda t: -probs[t])
    if params.top_k > 0:
        probs = normalised(keep_only(probs, ranked[:params.top_k]))
    if params.top_p < 1:
        kept, mass = [], 0.0
        for token in ranked:
            if mass >= params.top_p:
                break
            kept.append(token)
            mass += float(probs[token])
        probs = normalised(keep_only(probs, kept))
    return probs


def normalised(p):
    return p / p.sum()


def keep_only(probs, tokens):
    kept = torch.zeros_like(probs)
    kept[tokens] = probs[tokens]
    return kept


TRUNCATIONS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.5, top_k=10, top_p=0.9),
    dict(temperature=2.0, top_k=20, top_p=0.7, min_p=0.05),
    dict(temperature=1.0, top_k=1),
]


def test_greedy_rows_take_the_argmax_of_the_logits():
    logits = random_logits(5)
    out = sample([make_request(temperature=0.0) for _ in range(5)], logits)
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))
    assert out.logprobs is None and out.sampled_ranks is None


def test_all_greedy_batch_without_extras_builds_no_optional_tensors():
    md = SamplingMetadata.build([make_request(temperature=0.0, top_k=5, top_p=0.5, seed=3)], VOCAB, CPU)
    optional = [md.top_k, md.top_p, md.min_p, md.repetition_penalty, md.presence_penalty,
                md.frequency_penalty, md.penalty_token_ids, md.prompt_lens, md.num_tokens, md.logit_bias,
                md.min_tokens_index, md.max_num_logprobs]
    assert md.all_greedy and all(x is None for x in optional) and md.generators == {}


def test_truncated_logits_keep_exactly_the_reference_support():
    logits = random_logits(len(TRUNCATIONS))
    requests = [make_request(**t) for t in TRUNCATIONS]
    truncated = truncate_logits(logits, SamplingMetadata.build(requests, VOCAB, CPU))
    for row, request in enumerate(requests):
        expected = reference_probs(logits[row], request.sampling_params) > 0
        assert torch.equal(torch.isfinite(truncated[row]), expected), TRUNCATIONS[row]


def test_min_p_applies_before_top_p_as_in_vllm_v1():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    md = SamplingMetadata.build([make_request(min_p=0.5, top_p=0.6)], 3, CPU)
    assert torch.isfinite(truncate_logits(logits, md)).tolist() == [[True, False, False]]


def test_random_rows_only_sample_tokens_in_the_reference_support():
    logits = random_logits(len(TRUNCATIONS))
    draws = 200
    requests = [make_request(**t) for t in TRUNCATIONS for _ in range(draws)]
    torch.manual_seed(0)
    out = sample(requests, logits.repeat_interleave(draws, dim=0))
    for row, request in enumerate(requests):
        support = reference_probs(logits[row // draws], request.sampling_params) > 0
        assert support[out.sampled_token_ids[row]], TRUNCATIONS[row // draws]


def test_sampled_frequencies_match_the_reference_probabilities():
    params = dict(temperature=1.5, top_k=12, top_p=0.95, min_p=0.02)
    logits = random_logits(1, vocab=16, seed=1)
    draws = 20000
    torch.manual_seed(0)
    out = sample([make_request(**params) for _ in range(draws)], logits.expand(draws, -1))
    frequencies = torch.bincount(out.sampled_token_ids, minlength=16).double() / draws
    expected = reference_probs(logits[0], SamplingParams(**params))
    assert (frequencies - expected).abs().max() < 0.02


PROCESSING_CASES = {
    "repetition_penalty": dict(prompt=(1, 5, 9), output=(9, 12), repetition_penalty=1.7),
    "repetition_penalty_below_one": dict(prompt=(2, 3), output=(4,), repetition_penalty=0.6),
    "frequency_penalty": dict(output=(7, 7, 7, 8), frequency_penalty=0.9),
    "presence_penalty": dict(output=(7, 7, 8), presence_penalty=-1.2),
    "logit_bias": dict(logit_bias={3: 5.0, 40: -100.0, 63: 0.5}),
    "min_tokens_masks_eos_and_stop_ids": dict(eos=(0,), output=(5,), min_tokens=3, stop_token_ids=[11, 12]),
    "min_tokens_reached_masks_nothing": dict(eos=(0,), output=(5, 6, 7), min_tokens=3, stop_token_ids=[11]),
    "min_tokens_with_ignore_eos_keeps_eos": dict(eos=(0,), min_tokens=2, ignore_eos=True, stop_token_ids=[4]),
    "all_processors_together": dict(prompt=(1, 2, 3, 3), output=(3, 20, 20), eos=(0,), min_tokens=5,
                                    repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3,
                                    logit_bias={20: 2.0, 0: 10.0}, temperature=0.8, top_k=4),
}


@pytest.mark.parametrize("case", PROCESSING_CASES, ids=list(PROCESSING_CASES))
def test_processed_logits_match_the_reference(case):
    settings = dict(PROCESSING_CASES[case])
    request = make_request(prompt=settings.pop("prompt", (1, 2, 3)), output=settings.pop("output", ()),
                           eos=settings.pop("eos", ()), **settings)
    plain = make_request(prompt=(40, 41), output=(42,))
    logits = random_logits(2)
    processed = process_logits(logits, SamplingMetadata.build([plain, request], VOCAB, CPU))
    for row, req in enumerate([plain, request]):
        torch.testing.assert_close(processed[row], reference_processed_logits(logits[row], req).float())


def test_seeded_row_is_reproducible_across_batch_positions_and_compositions():
    row = random_logits(1, seed=2)[0]

    def run(position, batch_size, global_seed, seed=7, steps=6):
        torch.manual_seed(global_seed)
        requests = [make_request(temperature=1.0 if i % 2 else 0.0) for i in range(batch_size)]
        requests[position] = make_request(temperature=1.5, seed=seed)
        tokens = []
        for _ in range(steps):
            logits = random_logits(batch_size, seed=len(tokens) + 10)
            logits[position] = row
            tokens.append(int(sample(requests, logits).sampled_token_ids[position]))
        return tokens

    first = run(position=0, batch_size=3, global_seed=0)
    assert run(position=3, batch_size=5, global_seed=1) == first
    assert run(position=1, batch_size=2, global_seed=2) == first
    assert run(position=0, batch_size=3, global_seed=0, seed=8) != first


def test_build_creates_a_request_generator_once_and_reuses_it():
    request = make_request(seed=11)
    first = SamplingMetadata.build([make_request(), request], VOCAB, CPU)
    generator = request.generator
    second = SamplingMetadata.build([request], VOCAB, CPU)
    assert first.generators == {1: generator} and second.generators[0] is generator


def test_logprobs_are_log_softmax_of_raw_logits_with_the_sampled_token_first():
    logits = random_logits(3)
    requests = [make_request(temperature=0.0, logprobs=2, repetition_penalty=2.0, output=(int(logits[0].argmax()),)),
                make_request(temperature=0.9, logprobs=5, logit_bias={1: 50.0}),
                make_request(temperature=1.0)]
    out = sample(requests, logits)
    expected = torch.log_softmax(logits.double(), dim=-1)
    top_logprobs, top_ids = expected.topk(5, dim=-1)
    assert out.logprob_token_ids.shape == (3, 6) and out.logprobs.dtype == torch.float32
    assert torch.equal(out.logprob_token_ids[:, 0], out.sampled_token_ids)
    assert torch.equal(out.logprob_token_ids[:, 1:], top_ids)
    torch.testing.assert_close(out.logprobs[:, 1:].double(), top_logprobs)
    torch.testing.assert_close(out.logprobs[:, 0].double(), expected.gather(1, out.sampled_token_ids[:, None])[:, 0])


def test_sampled_rank_is_one_plus_the_number_of_more_likely_tokens():
    logits = random_logits(4)
    requests = [make_request(temperature=0.0, logit_bias={t: 100.0}, logprobs=0) for t in (9, 17, 30, 2)]
    out = sample(requests, logits)
    assert out.sampled_token_ids.tolist() == [9, 17, 30, 2]
    expected = [1 + int((logits[r] > logits[r, t]).sum()) for r, t in enumerate((9, 17, 30, 2))]
    assert out.sampled_ranks.tolist() == expected and out.logprobs.shape == (4, 1)


def test_mixed_batch_samples_each_row_by_its_own_parameters():
    logits = random_logits(4)
    seeded = dict(temperature=1.2, top_p=0.9, seed=5)
    requests = [make_request(temperature=0.0, presence_penalty=1.0, output=(int(logits[0].argmax()),)),
                make_request(temperature=0.8, top_k=3),
                make_request(**seeded),
                make_request(temperature=0.0)]
    out = sample(requests, logits)
    penalised = logits[0].clone()
    penalised[logits[0].argmax()] -= 1.0
    assert int(out.sampled_token_ids[0]) == int(penalised.argmax())
    assert int(out.sampled_token_ids[3]) == int(logits[3].argmax())
    assert reference_probs(logits[1], requests[1].sampling_params)[out.sampled_token_ids[1]] > 0
    alone = sample([make_request(**seeded)], logits[2:3])
    assert int(out.sampled_token_ids[2]) == int(alone.sampled_token_ids[0])


def test_half_precision_logits_are_sampled_like_float32():
    logits = random_logits(2).to(torch.bfloat16)
    requests = [make_request(temperature=0.0, frequency_penalty=0.5, output=(3,)),
                make_request(temperature=0.7, seed=1, logprobs=1)]
    out = sample(requests, logits)
    again = sample([requests[0], make_request(temperature=0.7, seed=1, logprobs=1)], logits.float())
    assert torch.equal(out.sampled_token_ids, again.sampled_token_ids)
    assert out.logprobs.dtype == torch.float32


def test_penalties_read_from_the_device_s_token_history_match_the_host_s_and_see_a_token_not_yet_on_the_host():
    from corral.engine.request import RequestStatus
    from corral.engine.token_history import TokenHistory
    history = TokenHistory(max_model_len=32, device=CPU, num_rows=2)
    settings = [dict(prompt=(1, 5, 9), output=(9, 12), repetition_penalty=1.7), dict(prompt=(3,), temperature=0.5),
                dict(prompt=(7,), output=(7, 7, 8), frequency_penalty=0.9, presence_penalty=0.4),
                dict(prompt=(2, 3, 2), min_tokens=4, eos=(0,), repetition_penalty=0.6, presence_penalty=-1.0)]
    requests = [Request(f"r{i}", list(s.pop("prompt")), SamplingParams(**{k: v for k, v in s.items()
                                                                          if k not in ("output", "eos")}),
                        eos_token_ids=frozenset(s.get("eos", ())), output_token_ids=list(s.get("output", ())))
                for i, s in enumerate(settings)]
    logits = random_logits(len(requests))

    def processed(num_tokens=None, with_history=True):
        md = SamplingMetadata.build(requests, VOCAB, CPU, num_tokens, history if with_history else None)
        return md, process_logits(logits, md)

    md, from_history = processed()
    assert torch.equal(from_history, processed(with_history=False)[1])
    assert len(history.owners) > 2 and md.history_rows[1] == 0  # grown; the free request has no row
    sampled = torch.tensor([12, 40, 8, 2])
    history.record(md.history_rows, [r.num_tokens for r in requests], sampled)
    _, ahead = processed([r.num_tokens + 1 for r in requests])  # a step launched before the host has them
    for request, token in zip(requests, sampled.tolist()):
        request.append_output_tokens([token])
    assert torch.equal(ahead, processed(with_history=False)[1])
    requests[0].status = RequestStatus.FINISHED_STOPPED
    rows = len(history.owners)
    requests[0] = Request("late", [4, 4], SamplingParams(frequency_penalty=1.0))
    history.rows(requests, [r.num_tokens for r in requests], [True, False, True, True])
    assert len(history.owners) == rows  # a finished request's row serves the next one


def test_a_history_row_stays_with_its_request_through_reclaims_and_a_reused_request_id():
    from corral.engine.request import RequestStatus
    from corral.engine.token_history import TokenHistory
    history = TokenHistory(max_model_len=16, device=CPU, num_rows=4)
    penalized = dict(repetition_penalty=1.2)
    old = Request("x", [1, 2], SamplingParams(**penalized))
    history.rows([old], [2], [True])
    old.status = RequestStatus.FINISHED_STOPPED
    again = Request("x", [3, 4, 5], SamplingParams(**penalized))  # a caller reusing a finished request's id
    (row,) = history.rows([again], [3], [True])
    history.record([row], [3], torch.tensor([6]))
    others = [Request(f"o{i}", [7], SamplingParams(**penalized)) for i in range(2)]
    history.rows(others, [1, 1], [True, True])  # every row taken: the finished "x" gives its row back
    assert history.rows([again], [4], [True]) == [row]  # the sampled 6 is in it, which the host lacks
    assert history.tokens[row, :4].tolist() == [3, 4, 5, 6]
    # a request that finished in the update just before its step's sampling still owns its row in that step
    for r in others:
        r.status = RequestStatus.FINISHED_STOPPED
    newcomer = Request("n", [8, 9], SamplingParams(**penalized))
    rows = history.rows(others + [newcomer], [1, 1, 2], [True] * 3)
    assert len(set(rows)) == 3 and 0 not in rows
