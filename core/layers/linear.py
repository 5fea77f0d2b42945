import torch
from torch import nn

from corral.distributed.group import building_group, kv_heads_per_rank

SKINNY_MAX_ROWS = 32  # up to here (decode of up to 32 sequences) the Triton GEMV beats cuBLAS; see benchmarks.gemv


def shape_of(source) -> tuple[int, ...]:
    """The shape of a checkpoint tensor: a torch.Tensor, or a safetensors slice not read yet."""
    return tuple(source.shape) if isinstance(source, torch.Tensor) else tuple(source.get_shape())


def read_part(source, dim: int, start: int, length: int) -> torch.Tensor:
    """Rows (dim 0) or columns (dim 1) start:start+length of a checkpoint tensor; from a safetensors
    slice, only those bytes are read."""
    return source[(slice(None),) * dim + (slice(start, start + length),)]


class Linear(nn.Module):
    """y = x W^T + b, with the output split into named or numbered shards that are loaded
    from separate checkpoint tensors (q/k/v into one qkv_proj, gate/up into one gate_up_proj).
    Sizes are this rank's; the parallel subclasses below say which part of each checkpoint
    tensor a rank takes (`read`)."""

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

    def weight_loader(self, param: nn.Parameter, source, shard_id=None):
        """`source`: a torch.Tensor or a safetensors slice (read here, only this rank's part)."""
        if shard_id is None:
            target = param.data
        else:
            index = self.shard_names.index(shard_id)
            offset = sum(self.output_sizes[:index])
            target = param.data.narrow(0, offset, self.output_sizes[index])
        loaded = self.read(param, source, shard_id, target.shape[0])
        if target.shape != loaded.shape:
            raise ValueError(f"expected a tensor of shape {tuple(target.shape)}, got {tuple(loaded.shape)}")
        target.copy_(loaded)

    def read(self, param: nn.Parameter, source, shard_id, rows: int) -> torch.Tensor:
        return source[:]

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        bias = self.bias if add_bias else None
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and 0 < x.numel() <= SKINNY_MAX_ROWS * x.shape[-1]:
            from corral.kernels.gemv import SkinnyLinearWorkspace, skinny_linear
            if self.skinny_workspace is None:
                self.skinny_workspace = SkinnyLinearWorkspace()
            return skinny_linear(x, self.weight, bias, self.skinny_workspace)
        return nn.functional.linear(x, self.weight, bias)


class QKVParallelLinear(Linear):
    """q, k and v in one matrix, split by attention heads: each rank computes its heads' q and the
    KV heads they read (one KV head replicated on several ranks when there are fewer than ranks)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        self.tp = building_group()
        self.total_heads = {"q": num_heads, "k": num_kv_heads, "v": num_kv_heads}
        self.num_heads, self.num_kv_heads = num_heads // self.tp.size, kv_heads_per_rank(num_kv_heads, self.tp.size)
        self.head_dim = head_dim
        super().__init__(hidden_size, [self.num_heads * head_dim] + [self.num_kv_heads * head_dim] * 2, bias,
                         shard_names=["q", "k", "v"])

    def read(self, param, source, shard_id, rows):
        first_head = self.tp.rank * self.total_heads[shard_id] // self.tp.size
        return read_part(source, 0, first_head * self.head_dim, rows)


class MergedColumnParallelLinear(Linear):
    """Several outputs in one matrix (gate and up), each split by rows: rank r computes the r-th part of each."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        self.tp = building_group()
        super().__init__(input_size, [size // self.tp.size for size in output_sizes], bias)

    def read(self, param, source, shard_id, rows):
        return read_part(source, 0, self.tp.rank * rows, rows)


class RowParallelLinear(Linear):
    """Split by input columns: each rank multiplies its part of x (the heads or the MLP columns it
    computed) and one all-reduce sums the parts; the bias is added once, by rank 0."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        self.tp = building_group()
        super().__init__(input_size // self.tp.size, [output_size], bias)

    def read(self, param, source, shard_id, rows):
        if param is self.bias:
            return source[:]
        width = self.weight.shape[1]
        return read_part(source, 1, self.tp.rank * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        return self.tp.all_reduce(super().forward(x, add_bias=self.tp.rank == 0))
