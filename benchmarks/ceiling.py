"""B1's ceilings on a GPU: the output tokens/s that no engine can pass, from the workload alone.

    python -m benchmarks.ceiling                                   # this GPU, measured now
    python -m benchmarks.ceiling --bandwidth 3.0 --matmul 782      # given TB/s and TFLOP/s

All 256 requests are resident at once (true for the Qwen3 models on an 80 GB GPU); request i's
prompt is prefilled, then it decodes out_i - 1 steps (the prefill samples its first token), step t
reading prompt_i + t keys. Two ceilings:

- bandwidth: each decode step reads every weight once and the KV cache of its batch at the copy
  bandwidth; prefill and FLOPs are free. This is the ceiling BENCHMARKS.md's floors describe.
- roofline: each decode step takes the longer of that and its FLOPs at the bf16 matmul rate
  (2 x weights per token, plus attention), and the prefill's FLOPs (causal attention included) take
  their time at the matmul rate. A GPU with more bandwidth but not more FLOP/s (an H200 against an
  H100) raises the first ceiling more than any engine can follow; compare engines across GPUs by
  their fraction of this one.
- serial: as the roofline, but each decode step runs its matmuls (weights at the copy bandwidth or
  their FLOPs at the matmul rate, whichever is longer) and then its attention (the KV cache at the
  copy bandwidth or its FLOPs) one after the other, as an engine that does not overlap them does.
  Where no step's matmuls are compute-bound (an H100 on B1) it equals the roofline.
"""
import argparse
import sys

from benchmarks.configs import CONFIGS, decode_weight_bytes


def b1_lengths(num_requests: int = 256, seed: int = 0) -> tuple[list[int], list[int]]:
    """(prompt lengths, output lengths) of benchmarks.throughput's B1 workload, drawn alike."""
    from benchmarks.throughput import b1_workload
    prompts, params = b1_workload(num_requests, seed)
    return [len(p) for p in prompts], [sp.max_tokens for sp in params]


def b1_ceilings(c: dict, prompt_lens: list[int], output_lens: list[int], bandwidth: float,
                matmul: float) -> dict:
    """Output tokens/s: {"bandwidth": ..., "roofline": ...} for bandwidth in bytes/s and matmul
    in FLOP/s (bf16 weights and KV cache)."""
    layers, hidden = c["num_hidden_layers"], c["hidden_size"]
    head_dim = c.get("head_dim", hidden // c["num_attention_heads"])
    q_width = c["num_attention_heads"] * head_dim
    kv_per_token = layers * c["num_key_value_heads"] * head_dim * 2 * 2
    weight_bytes = decode_weight_bytes(c)
    lm_head = c["vocab_size"] * hidden
    matmul_params = weight_bytes // 2
    attention_flops = 4 * q_width * layers  # per (query, key) pair: QK^T and PV
    bandwidth_s = roofline_s = serial_s = 0.0
    for t in range(1, max(output_lens)):
        live = [p + t for p, o in zip(prompt_lens, output_lens) if o > t]
        if not live:
            break
        weights_s, kv_s = weight_bytes / bandwidth, sum(live) * kv_per_token / bandwidth
        matmul_s, attention_s = len(live) * 2 * matmul_params / matmul, sum(live) * attention_flops / matmul
        bandwidth_s += weights_s + kv_s
        roofline_s += max(weights_s + kv_s, matmul_s + attention_s)
        serial_s += max(weights_s, matmul_s) + max(kv_s, attention_s)
    prefill_flops = sum(2 * (matmul_params - lm_head) * n + 2 * lm_head + attention_flops * n * (n + 1) // 2
                        for n in prompt_lens)
    roofline_s += prefill_flops / matmul
    serial_s += prefill_flops / matmul
    tokens = sum(output_lens)
    return {"bandwidth": tokens / bandwidth_s, "roofline": tokens / roofline_s, "serial": tokens / serial_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="qwen3-0.6b,qwen3-4b,llama-2-7b")
    ap.add_argument("--bandwidth", type=float, help="copy bandwidth in TB/s (default: measure this GPU's)")
    ap.add_argument("--matmul", type=float, help="bf16 matmul rate in TFLOP/s (default: measure this GPU's)")
    args = ap.parse_args()
    bandwidth, matmul = args.bandwidth, args.matmul
    if bandwidth is None or matmul is None:
        import torch
        if not torch.cuda.is_available():
            sys.exit("benchmarks.ceiling: no CUDA GPU to measure; pass --bandwidth and --matmul")
        from benchmarks.kernels import ceilings
        copy, rate = ceilings()
        bandwidth, matmul = bandwidth or copy / 1e12, matmul or rate / 1e12
    prompt_lens, output_lens = b1_lengths()
    print(f"B1 ceilings at {bandwidth:.2f} TB/s and {matmul:.0f} TFLOP/s, {sum(output_lens):,} output tokens")
    for name in args.models.split(","):
        ceiling = b1_ceilings(CONFIGS[name], prompt_lens, output_lens, bandwidth * 1e12, matmul * 1e12)
        print(f"{name:11s} bandwidth {ceiling['bandwidth']:8,.0f} tok/s   roofline {ceiling['roofline']:8,.0f} tok/s"
              f"   serial {ceiling['serial']:8,.0f} tok/s")


if __name__ == "__main__":
    main()
