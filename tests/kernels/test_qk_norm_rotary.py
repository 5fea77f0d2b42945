from types import SimpleNamespace

import pytest
import torch

from corral.kernels.qk_norm_rotary import qk_norm_rotary, qk_norm_rotary_ref
from corral.kernels.rotary import build_cos_sin_cache
from corral.layers.norm import RMSNorm
from corral.layers.rotary import RotaryEmbedding

# bf16: normed values reach about 4, where one rounding step of the intermediate the kernel and
# the reference may round differently is 2**-7 * 4 = 0.03 (more after a rotation); the norm-wise
# error stays far smaller
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2}
NORM_TOL = {torch.float32: 1e-6, torch.bfloat16: 2e-2}  # the CPU interpreter truncates to bf16
EPS = 1e-6
SENTINEL = 7.0


def fused_qkv(tokens, num_q_heads, num_kv_heads, head_dim, dtype, device, pad=3):
    """q, k, v as the strided views LlamaAttention takes of one fused qkv output; `pad` extra
    columns per token (a wider token stride) hold a sentinel that no kernel may touch."""
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.full((tokens, q_size + 2 * kv_size + pad), SENTINEL, device=device, dtype=dtype)
    qkv[:, :q_size + 2 * kv_size] = (torch.randn(tokens, q_size + 2 * kv_size, device=device) * 3).to(dtype)
    q, k, v, _ = qkv.split([q_size, kv_size, kv_size, pad], dim=-1)
    return (qkv, q.view(tokens, num_q_heads, head_dim), k.view(tokens, num_kv_heads, head_dim),
            v.view(tokens, num_kv_heads, head_dim))


def assert_matches(out: torch.Tensor, ref: torch.Tensor):
    torch.testing.assert_close(out, ref, rtol=TOL[out.dtype], atol=TOL[out.dtype])
    error = (out.double() - ref.double()).norm() / ref.double().norm()
    assert error < NORM_TOL[out.dtype], f"relative error {error:.2e}"


def norm_weights(head_dim, dtype, device):
    return [(1 + torch.randn(head_dim, device=device) / 4).to(dtype) for _ in range(2)]


def check_against_reference(tokens, max_positions, num_q_heads, num_kv_heads, head_dim, dtype, device):
    """The kernel on q/k views of a fused qkv tensor equals the reference; v and the row pad stay."""
    cache = build_cos_sin_cache(head_dim, max_positions, 1e6, device=device)
    positions = torch.randint(0, max_positions, (tokens,), device=device)
    qkv, q, k, v = fused_qkv(tokens, num_q_heads, num_kv_heads, head_dim, dtype, device)
    q_weight, k_weight = norm_weights(head_dim, dtype, device)
    v_before, pad_before = v.clone(), qkv[:, -3:].clone()
    q_ref, k_ref = q.clone(), k.clone()
    qk_norm_rotary(q, k, positions, cache, q_weight, k_weight, EPS)
    qk_norm_rotary_ref(q_ref, k_ref, positions, cache, q_weight, k_weight, EPS)
    # on a GPU within one rounding; Triton's CPU interpreter truncates fp32 -> bf16
    assert_matches(q, q_ref)
    assert_matches(k, k_ref)
    assert torch.equal(v, v_before) and torch.equal(qkv[:, -3:], pad_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", [(2, 2, 64), (4, 2, 128), (6, 1, 64),
                                                               (8, 1, 128), (8, 2, 64)])
def test_qk_norm_rotary_matches_reference_on_fused_qkv_views(num_q_heads, num_kv_heads, head_dim,
                                                             dtype, device):
    check_against_reference(5, 4096, num_q_heads, num_kv_heads, head_dim, dtype, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", [(4, 2, 128), (6, 3, 64)])
def test_qk_norm_rotary_stores_k_and_v_like_store_kv_cache(num_q_heads, num_kv_heads, head_dim, dtype, device):
    from corral.kernels.kv_cache import store_kv_cache_ref
    tokens, block_size, num_blocks = 6, 16, 4
    cache = build_cos_sin_cache(head_dim, 512, 1e6, device=device)
    positions = torch.randint(0, 512, (tokens,), device=device)
    _, q, k, v = fused_qkv(tokens, num_q_heads, num_kv_heads, head_dim, dtype, device)
    q_weight, k_weight = norm_weights(head_dim, dtype, device)
    slots = torch.tensor([17, 3, -1, 63, 40, 0], device=device)  # -1: a padded row, not stored
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), SENTINEL, dtype=dtype, device=device)
    expected = kv_cache.clone()
    q_ref, k_ref = q.clone(), k.clone()
    qk_norm_rotary(q, k, positions, cache, q_weight, k_weight, EPS, v, kv_cache, slots)
    qk_norm_rotary_ref(q_ref, k_ref, positions, cache, q_weight, k_weight, EPS)
    assert_matches(q, q_ref)
    store_kv_cache_ref(k, v, expected, slots)  # the kernel's own k: the cache holds exactly what q meets
    assert torch.equal(kv_cache, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rotary_stores_into_an_fp8_cache_like_store_kv_cache(dtype, device):
    from corral.kernels.kv_cache import store_kv_cache_ref
    tokens, num_q_heads, num_kv_heads, head_dim = 6, 4, 2, 128
    cache = build_cos_sin_cache(head_dim, 512, 1e6, device=device)
    positions = torch.randint(0, 512, (tokens,), device=device)
    _, q, k, v = fused_qkv(tokens, num_q_heads, num_kv_heads, head_dim, dtype, device)
    v[1] *= 1e4  # past float8 e4m3's range: saturates
    q_weight, k_weight = norm_weights(head_dim, dtype, device)
    slots = torch.tensor([17, 3, -1, 63, 40, 0], device=device)
    kv_cache = torch.zeros((2, 4, 16, num_kv_heads, head_dim), dtype=torch.float8_e4m3fn, device=device)
    expected = kv_cache.clone()
    qk_norm_rotary(q, k, positions, cache, q_weight, k_weight, EPS, v, kv_cache, slots)
    store_kv_cache_ref(k, v, expected, slots)
    assert torch.equal(kv_cache.float(), expected.float())
    assert kv_cache.float().abs().max() == 448


def test_reference_is_the_unfused_layer_path_to_the_bit_in_fp32(device):
    """q_norm, k_norm, then rotary, as Qwen3Attention runs them on a CPU."""
    tokens, num_q_heads, num_kv_heads, head_dim = 4, 4, 2, 64
    _, q, k, _ = fused_qkv(tokens, num_q_heads, num_kv_heads, head_dim, torch.float32, device)
    q_norm, k_norm = RMSNorm(head_dim, EPS), RMSNorm(head_dim, EPS)
    q_norm.weight.data, k_norm.weight.data = norm_weights(head_dim, torch.float32, "cpu")
    rotary = RotaryEmbedding(head_dim, 256, 1e6)
    positions = torch.tensor([0, 3, 100, 255])
    q_cpu, k_cpu = q.cpu(), k.cpu()
    expected_q, expected_k = rotary(positions, q_norm(q_cpu), k_norm(k_cpu))
    qk_norm_rotary_ref(q_cpu, k_cpu, positions, rotary.cos_sin_cache, q_norm.weight, k_norm.weight, EPS)
    assert torch.equal(q_cpu, expected_q) and torch.equal(k_cpu, expected_k)


def test_position_zero_only_normalizes(device):
    tokens, head_dim = 3, 64
    _, q, k, _ = fused_qkv(tokens, 4, 2, head_dim, torch.float32, device)
    q_weight, k_weight = norm_weights(head_dim, torch.float32, device)
    q_ref, k_ref = q.clone(), k.clone()
    qk_norm_rotary(q, k, torch.zeros(tokens, dtype=torch.int64, device=device),
                   build_cos_sin_cache(head_dim, 8, 1e6, device=device), q_weight, k_weight, EPS)
    h = q_ref * torch.rsqrt(q_ref.pow(2).mean(-1, keepdim=True) + EPS)
    torch.testing.assert_close(q, q_weight * h, rtol=1e-5, atol=1e-5)
    h = k_ref * torch.rsqrt(k_ref.pow(2).mean(-1, keepdim=True) + EPS)
    torch.testing.assert_close(k, k_weight * h, rtol=1e-5, atol=1e-5)


def test_no_tokens_is_a_no_op(device):
    q = torch.empty(0, 4, 64, device=device)
    k = torch.empty(0, 2, 64, device=device)
    weight = torch.ones(64, device=device)
    qk_norm_rotary(q, k, torch.empty(0, dtype=torch.int64, device=device),
                   build_cos_sin_cache(64, 8, 1e6, device=device), weight, weight, EPS)


def test_rejects_a_weight_of_the_wrong_size(device):
    _, q, k, _ = fused_qkv(1, 2, 1, 64, torch.float32, device)
    with pytest.raises(ValueError, match="weights"):
        qk_norm_rotary(q, k, torch.zeros(1, dtype=torch.int64, device=device),
                       build_cos_sin_cache(64, 8, 1e6, device=device),
                       torch.ones(64, device=device), torch.ones(128, device=device), EPS)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", [(32, 8, 128), (16, 8, 128), (40, 8, 128),
                                                               (64, 8, 128), (14, 2, 64), (8, 8, 64)])
@pytest.mark.parametrize("tokens", [1, 7, 8192])
def test_qk_norm_rotary_serving_shapes(tokens, num_q_heads, num_kv_heads, head_dim, dtype, device):
    check_against_reference(tokens, 40960, num_q_heads, num_kv_heads, head_dim, dtype, device)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen3_attention_runs_the_fused_kernel_on_cuda_like_its_cpu_path(dtype):
    from corral.model_config import ModelConfig
    from corral.plugins.qwen3 import Qwen3Attention
    config = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
                         rope_theta=1e6, rope_scaling=None, max_position_embeddings=1024,
                         tie_word_embeddings=False, attention_bias=False)
    torch.manual_seed(0)
    cpu = Qwen3Attention(config).to(dtype)
    for norm in (cpu.q_norm, cpu.k_norm):
        norm.weight.data = (1 + torch.randn(64) / 4).to(dtype)
    with torch.device("cuda"):
        gpu = Qwen3Attention(config).to(dtype)
    gpu.load_state_dict(cpu.state_dict())
    positions = torch.tensor([0, 5, 700])
    _, q, k, _ = fused_qkv(3, 8, 2, 64, dtype, "cpu")
    unfused = SimpleNamespace(backend=SimpleNamespace(name="torch"), attn_metadata=None)  # no KV store
    expected_q, expected_k, _ = cpu.position_qk(positions, q.clone(), k.clone(), None, unfused)
    _, q_gpu, k_gpu, _ = fused_qkv(3, 8, 2, 64, dtype, "cuda")
    q_gpu.copy_(q), k_gpu.copy_(k)
    out_q, out_k, kv_stored = gpu.position_qk(positions.cuda(), q_gpu, k_gpu, None, unfused)
    assert not kv_stored
    assert out_q.data_ptr() == q_gpu.data_ptr() and out_k.data_ptr() == k_gpu.data_ptr()
    # the CPU path rotates in x.dtype, the kernel in fp32
    assert_matches(out_q.cpu(), expected_q)
    assert_matches(out_k.cpu(), expected_k)
