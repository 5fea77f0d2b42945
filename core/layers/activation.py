import torch
from torch import nn


class SiluAndMul(nn.Module):
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from corral.kernels.activation import silu_and_mul
            return silu_and_mul(x)
        gate, up = x.chunk(2, -1)
        return nn.functional.silu(gate) * up
