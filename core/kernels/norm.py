"""RMSNorm, alone and fused with the residual add, computed in fp32 like HF Llama / Qwen3."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr, num_rows, rows_per_tok, n, eps,
                     stride_xt, stride_xh, stride_rt, stride_rh,
                     HAS_RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < num_rows)[:, None] & (cols < n)[None, :]
    tok = (rows // rows_per_tok).to(tl.int64)
    head = rows % rows_per_tok
    x = tl.load(x_ptr + (tok * stride_xt + head * stride_xh)[:, None] + cols[None, :], mask=mask,
                other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + (tok * stride_rt + head * stride_rh)[:, None] + cols[None, :],
                    mask=mask, other=0.0)
        # the residual stream stays in the model dtype
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(new_res_ptr + rows.to(tl.int64)[:, None] * n + cols[None, :], x, mask=mask)
    h = x.to(tl.float32)
    h = h * tl.rsqrt(tl.sum(h * h, 1) / n + eps)[:, None]
    w = tl.load(w_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)
    out = w[None, :] * h.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * n + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """View x as [tokens, heads, n] with a contiguous last dim, copying only when it must."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3:
        return x
    return x.reshape(-1, x.shape[-1]).unsqueeze(1)


def _output(x: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
    if given is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if given.shape != x.shape or given.dtype != x.dtype or not given.is_contiguous():
        raise ValueError("an output buffer must be contiguous, with the shape and dtype of x")
    return given


def _launch(x, residual, weight, eps, out, residual_out):
    rows = _as_rows(x)
    num_tok, rows_per_tok, n = rows.shape
    num_rows = num_tok * rows_per_tok
    out = _output(x, out)
    new_res = _output(x, residual_out) if residual is not None else out
    res = _as_rows(residual) if residual is not None else rows
    block_n = triton.next_power_of_2(n)
    block_r = max(1, min(16, 2048 // block_n))
    if num_rows:
        _rms_norm_kernel[(triton.cdiv(num_rows, block_r),)](
            rows, res, weight, out, new_res, num_rows, rows_per_tok, n, eps,
            rows.stride(0), rows.stride(1), res.stride(0), res.stride(1),
            HAS_RESIDUAL=residual is not None, BLOCK_R=block_r, BLOCK_N=block_n,
            num_warps=min(16, max(4, block_r * block_n // 512)),
        )
    return out, new_res


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., n]. x may be a strided view, e.g. q [T, Hq, D] from a
    fused qkv output (per-head q/k norm). Returns a contiguous tensor in x.dtype: `out` if given
    (it may be x itself when x is contiguous), else a new one."""
    return _launch(x, None, weight, eps, out, None)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       out: torch.Tensor | None = None,
                       residual_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual (in x.dtype); returns (rms_norm(new_residual), new_residual).
    New tensors unless out / residual_out are given; out=x, residual_out=residual updates both in
    place (each element is read before it is written)."""
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    return _launch(x, residual, weight, eps, out, residual_out)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * h.to(x.dtype)).to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    new_residual = (x + residual).to(x.dtype)
    return rms_norm_ref(new_residual, weight, eps), new_residual
