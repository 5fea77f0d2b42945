import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm as HF Llama computes it; with `residual`, adds it first and returns both."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.is_cuda:
            from corral.kernels import norm
            if residual is None:
                return norm.rms_norm(x, self.weight, self.eps)
            return norm.fused_add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            residual = x + residual
            return self._norm(residual), residual
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)
