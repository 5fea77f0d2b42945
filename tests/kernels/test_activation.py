import pytest
import torch

from corral.kernels.activation import silu_and_mul, silu_and_mul_ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2 * 64), (7, 2 * 1000), (3, 5, 2 * 96), (2, 2 * 3000)])
def test_silu_and_mul_matches_reference(shape, dtype, device):
    x = (torch.randn(shape, device=device) * 3).to(dtype)
    out = torch.full((*shape[:-1], shape[-1] // 2), float("nan"), dtype=dtype, device=device)
    silu_and_mul(x, out=out)
    expected = silu_and_mul_ref(x)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=TOL[dtype], atol=TOL[dtype])


def test_silu_and_mul_reads_a_strided_input(device):
    x = torch.randn(6, 2 * 128, device=device)[::2]
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), rtol=1e-5, atol=1e-5)


def test_silu_and_mul_rejects_odd_width(device):
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(2, 7, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("inter", [9728, 11008, 3072])
def test_silu_and_mul_serving_shapes(inter, device):
    x = torch.randn(4096, 2 * inter, device=device, dtype=torch.bfloat16)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), rtol=2e-2, atol=2e-2)
