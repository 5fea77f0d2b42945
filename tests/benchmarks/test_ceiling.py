"""benchmarks.ceiling against a schedule worked out by hand."""
import pytest

from benchmarks.ceiling import b1_ceilings, b1_lengths

# one layer: q, k, v, o of 8 x 8 and gate, up, down of 8 x 4, plus a tied 10 x 8 embedding:
# 256 + 96 + 80 = 432 weights, 864 bytes read per decode step
TINY = dict(num_hidden_layers=1, hidden_size=8, num_attention_heads=1, head_dim=8, num_key_value_heads=1,
            intermediate_size=4, vocab_size=10, tie_word_embeddings=True)
KV_PER_TOKEN = 1 * 1 * 8 * 2 * 2  # layers x kv heads x head_dim x (K, V) x bf16


def test_bandwidth_ceiling_by_hand():
    # prompts 3 and 5; outputs 3 and 2: step 1 reads 4 + 6 keys, step 2 reads 5 (the second is done)
    ceiling = b1_ceilings(TINY, [3, 5], [3, 2], bandwidth=1000.0, matmul=1e30)
    seconds = (864 + 10 * KV_PER_TOKEN) / 1000 + (864 + 5 * KV_PER_TOKEN) / 1000
    assert ceiling["bandwidth"] == pytest.approx(5 / seconds)
    assert ceiling["roofline"] == pytest.approx(5 / seconds)  # FLOPs free
    assert ceiling["serial"] == pytest.approx(5 / seconds)


def test_roofline_charges_prefill_and_compute_bound_steps():
    ceiling = b1_ceilings(TINY, [3, 5], [3, 2], bandwidth=1e30, matmul=1000.0)
    attention = 4 * 8  # FLOPs per (query, key) pair
    decode = (2 * 2 * 432 + 10 * attention) + (1 * 2 * 432 + 5 * attention)
    prefill = sum(2 * (432 - 80) * n + 2 * 80 + attention * n * (n + 1) // 2 for n in (3, 5))
    assert ceiling["roofline"] == pytest.approx(5 / ((decode + prefill) / 1000))
    assert ceiling["serial"] == pytest.approx(ceiling["roofline"])  # nothing to overlap: all compute
    assert ceiling["bandwidth"] > 1e20


def test_serial_adds_compute_bound_matmuls_to_bandwidth_bound_attention():
    # 1 byte/s and 1.5 FLOP/s: the first step's matmuls are compute-bound (1,152 s against 864 s of
    # weights), its attention bandwidth-bound (320 s of KV against 213 s of FLOPs)
    bandwidth, matmul = 1.0, 1.5
    ceiling = b1_ceilings(TINY, [3, 5], [3, 2], bandwidth=bandwidth, matmul=matmul)
    attention = 4 * 8
    serial = roofline = 0.0
    for num_seqs, keys in ((2, 10), (1, 5)):
        weights, kv = 864 / bandwidth, keys * KV_PER_TOKEN / bandwidth
        matmuls, attend = num_seqs * 2 * 432 / matmul, keys * attention / matmul
        serial += max(weights, matmuls) + max(kv, attend)
        roofline += max(weights + kv, matmuls + attend)
    prefill = sum(2 * (432 - 80) * n + 2 * 80 + attention * n * (n + 1) // 2 for n in (3, 5)) / matmul
    assert ceiling["serial"] == pytest.approx(5 / (serial + prefill))
    assert ceiling["roofline"] == pytest.approx(5 / (roofline + prefill))
    assert ceiling["serial"] < ceiling["roofline"]


def test_b1_lengths_match_the_workload():
    prompts, outputs = b1_lengths()
    assert len(prompts) == len(outputs) == 256
    assert min(prompts) >= 100 and max(prompts) <= 1024 and sum(outputs) == 133_966  # the B1 runs' count
