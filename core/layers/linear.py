import torch
from torch import nn

SKINNY_MAX_ROWS = 32  # up to here (decode of up to 32 sequences) the Triton GEMV beats cuBLAS; see benchmarks.gemv


class Linear(nn.Module):
    """y = x W^T + b, with the output split into named or numbered shards that are loaded
    from separate checkpoint tensors (q/k/v into one qkv_proj, gate/up into one gate_up_proj)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 shard_names: list | None = None):
        super().__init__()
        self.skinny_workspace = None  # the Triton GEMV's split-K scratch: the engine shares one, else made on first use
        self.output_sizes = output_sizes
        self.shard_names = shard_names or list(range(len(output_sizes)))
        self.weight = nn.Parameter(torch.empty(sum(output_sizes), input_size), requires_grad=False)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(sum(output_sizes)), requires_grad=False)
        for param in (self.weight, self.bias):
            if param is not None:
                param.weight_loader = self.weight_loader
                param.shard_ids = self.shard_names if len(output_sizes) > 1 else [None]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None):
        if shard_id is None:
            target = param.data
        else:
            index = self.shard_names.index(shard_id)
            offset = sum(self.output_sizes[:index])
            target = param.data.narrow(0, offset, self.output_sizes[index])
        if target.shape != loaded.shape:
            raise ValueError(f"expected a tensor of shape {tuple(target.shape)}, got {tuple(loaded.shape)}")
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and 0 < x.numel() <= SKINNY_MAX_ROWS * x.shape[-1]:
            from corral.kernels.gemv import SkinnyLinearWorkspace, skinny_linear
            if self.skinny_workspace is None:
                self.skinny_workspace = SkinnyLinearWorkspace()
            return skinny_linear(x, self.weight, self.bias, self.skinny_workspace)
        return nn.functional.linear(x, self.weight, self.bias)
