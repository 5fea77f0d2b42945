import pytest
import torch

from corral.kernels.norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
EPS = 1e-6


def _nan_like(x):
    return torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64), (5, 1000), (3, 4096), (4, 3, 128)])
def test_rms_norm_matches_reference(shape, dtype, device):
    x = (torch.randn(shape, device=device) * 4).to(dtype)
    weight = (1 + torch.randn(shape[-1], device=device) / 4).to(dtype)
    out = rms_norm(x, weight, EPS, out=_nan_like(x))
    torch.testing.assert_close(out, rms_norm_ref(x, weight, EPS), rtol=TOL[dtype], atol=TOL[dtype])


def test_rms_norm_per_head_on_a_strided_qkv_view(device):
    qkv = torch.randn(6, (4 + 2 * 2) * 64, device=device, dtype=torch.bfloat16)
    q = qkv[:, :4 * 64].view(6, 4, 64)
    weight = torch.randn(64, device=device, dtype=torch.bfloat16)
    out = rms_norm(q, weight, EPS)
    assert out.shape == q.shape
    torch.testing.assert_close(out, rms_norm_ref(q, weight, EPS), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (7, 1000), (3, 2048)])
def test_fused_add_rms_norm_matches_reference(shape, dtype, device):
    x = torch.randn(shape, device=device).to(dtype)
    residual = (torch.randn(shape, device=device) * 3).to(dtype)
    weight = torch.randn(shape[-1], device=device).to(dtype)
    x_before, res_before = x.clone(), residual.clone()
    out, new_residual = fused_add_rms_norm(x, residual, weight, EPS, out=_nan_like(x),
                                           residual_out=_nan_like(x))
    expected_out, expected_residual = fused_add_rms_norm_ref(x, residual, weight, EPS)
    # exact on a GPU; Triton's CPU interpreter truncates fp32 -> bf16 instead of rounding
    torch.testing.assert_close(new_residual, expected_residual, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(out, expected_out, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.equal(x, x_before) and torch.equal(residual, res_before)


def test_fused_add_rms_norm_in_place(device):
    x = torch.randn(5, 256, device=device)
    residual = torch.randn(5, 256, device=device)
    weight = torch.randn(256, device=device)
    expected_out, expected_residual = fused_add_rms_norm_ref(x, residual, weight, EPS)
    out, new_residual = fused_add_rms_norm(x, residual, weight, EPS, out=x, residual_out=residual)
    assert out.data_ptr() == x.data_ptr() and new_residual.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_residual, expected_residual, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [1024, 2560, 4096])
@pytest.mark.parametrize("tokens", [1, 257, 8192])
def test_norms_serving_shapes_and_exact_bf16_residual(tokens, hidden, device):
    x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.randn(hidden, device=device, dtype=torch.bfloat16)
    torch.testing.assert_close(rms_norm(x, weight, EPS), rms_norm_ref(x, weight, EPS),
                               rtol=2e-2, atol=2e-2)
    out, new_res = fused_add_rms_norm(x, residual, weight, EPS)
    ref_out, ref_res = fused_add_rms_norm_ref(x, residual, weight, EPS)
    torch.testing.assert_close(new_res, ref_res, rtol=0, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=2e-2, atol=2e-2)
