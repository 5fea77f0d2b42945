import pytest
import torch

from corral.kernels.rotary import apply_rotary, apply_rotary_ref, build_cos_sin_cache

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _hf_rotate(x, cos, sin):
    """HF Llama's apply_rotary_pos_emb, computed in fp32."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", [(4, 4, 64), (8, 2, 128), (6, 1, 64),
                                                               (16, 8, 128)])
def test_apply_rotary_matches_reference(num_q_heads, num_kv_heads, head_dim, dtype, device):
    tokens = 9
    cache = build_cos_sin_cache(head_dim, 4096, 1e6, device=device)
    positions = torch.randint(0, 4096, (tokens,), device=device)
    qkv = torch.randn(tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, device=device).to(dtype)
    q = qkv[:, :num_q_heads * head_dim].view(tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim:(num_q_heads + num_kv_heads) * head_dim].view(
        tokens, num_kv_heads, head_dim)
    v_before = qkv[:, (num_q_heads + num_kv_heads) * head_dim:].clone()
    q_ref, k_ref = q.clone(), k.clone()
    apply_rotary(q, k, positions, cache)
    apply_rotary_ref(q_ref, k_ref, positions, cache)
    torch.testing.assert_close(q, q_ref, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(k, k_ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.equal(qkv[:, (num_q_heads + num_kv_heads) * head_dim:], v_before)


def test_reference_matches_hf_rotate_half(device):
    head_dim, tokens = 64, 5
    cache = build_cos_sin_cache(head_dim, 128, 10000.0, device=device)
    positions = torch.tensor([0, 1, 17, 64, 127], device=device)
    q = torch.randn(tokens, 2, head_dim, device=device)
    k = torch.randn(tokens, 1, head_dim, device=device)
    cos, sin = cache[positions].chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
    expected_q, expected_k = _hf_rotate(q, cos, sin), _hf_rotate(k, cos, sin)
    apply_rotary_ref(q, k, positions, cache)
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)


def test_position_zero_is_identity(device):
    q = torch.randn(3, 2, 64, device=device)
    k = torch.randn(3, 2, 64, device=device)
    q0, k0 = q.clone(), k.clone()
    apply_rotary(q, k, torch.zeros(3, dtype=torch.int64, device=device),
                 build_cos_sin_cache(64, 8, 10000.0, device=device))
    torch.testing.assert_close(q, q0)
    torch.testing.assert_close(k, k0)


@pytest.mark.gpu
def test_apply_rotary_serving_shapes(device):
    tokens, hq, hkv, d = 8192, 32, 8, 128
    cache = build_cos_sin_cache(d, 40960, 1e6, device=device)
    positions = torch.randint(0, 40960, (tokens,), device=device)
    q = torch.randn(tokens, hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(tokens, hkv, d, device=device, dtype=torch.bfloat16)
    q_ref, k_ref = q.clone(), k.clone()
    apply_rotary(q, k, positions, cache)
    apply_rotary_ref(q_ref, k_ref, positions, cache)
    torch.testing.assert_close(q, q_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(k, k_ref, rtol=2e-2, atol=2e-2)
