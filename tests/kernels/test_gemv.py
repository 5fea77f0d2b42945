"""The skinny (decode) linear kernel against F.linear in fp32."""
import pytest
import torch
import torch.nn.functional as F

from corral.kernels.gemv import SkinnyLinearWorkspace, choose_config, skinny_linear

TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _inputs(m, n, k, dtype, device, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    weight = (torch.randn(n, k, generator=gen) / k ** 0.5).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
    return x, weight, b


def _check(out, x, weight, bias):
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    assert out.dtype == x.dtype and out.shape == expected.shape
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


def _run(m, n, k, dtype, device, bias=False, workspace=None, seed=0, **config):
    x, weight, b = _inputs(m, n, k, dtype, device, bias, seed)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    assert skinny_linear(x, weight, b, workspace, out=out, **config) is out
    _check(out, x, weight, b)


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 17, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(dtype, m, bias, split_k, device):
    # 130 = 4 tiles of 32 and a ragged 2; 300 = 4 chunks of 64 and a ragged 44, which 3 splits
    # take as 2, 2 and the ragged one
    _run(m, 130, 300, dtype, device, bias, SkinnyLinearWorkspace(), split_k=split_k, block_n=32,
         block_k=64)


@pytest.mark.parametrize("m", [1, 5, 40])
@pytest.mark.parametrize("n, k", [(1, 1), (3, 17), (33, 300), (300, 129), (40, 1100)])
def test_odd_shapes_with_the_default_config(n, k, m, device):
    _run(m, n, k, torch.bfloat16, device, bias=True, workspace=SkinnyLinearWorkspace())


@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("block_n, block_k, split_k", [(16, 16, 7), (32, 64, 2), (64, 32, 100)])
def test_forced_configs(block_n, block_k, split_k, m, device):
    _run(m, 97, 250, torch.float16, device, workspace=SkinnyLinearWorkspace(), block_n=block_n,
         block_k=block_k, split_k=split_k)


@pytest.mark.parametrize("m", [1, 6])
def test_workspace_is_reused_and_left_at_zero(m, device):
    workspace = SkinnyLinearWorkspace()
    for seed in range(3):  # later calls find the counters the earlier ones reset
        _run(m, 70, 200, torch.bfloat16, device, bias=True, workspace=workspace, seed=seed,
             split_k=4, block_k=32)
    _run(m, 50, 200, torch.bfloat16, device, workspace=workspace, split_k=4, block_k=32)
    assert len(workspace._buffers) == 2
    for _, counters in workspace._buffers.values():
        assert not counters.any()


def test_split_without_a_workspace(device):
    _run(3, 45, 300, torch.bfloat16, device, split_k=5, block_k=32)


def test_leading_dims_and_strided_operands(device):
    x, weight, bias = _inputs(6, 80, 96, torch.bfloat16, device, bias=True)
    fused = torch.cat([weight, torch.randn_like(weight)], dim=1)  # rows of stride 192
    padded = torch.cat([x, torch.randn_like(x)], dim=1)
    xs = padded[:, :96].view(2, 3, 96)
    out = skinny_linear(xs, fused[:, :96], bias, SkinnyLinearWorkspace(), split_k=2, block_k=32)
    assert out.shape == (2, 3, 80)
    _check(out.view(6, 80), x, weight, bias)


def test_empty_inputs(device):
    weight = torch.randn(8, 32, device=device, dtype=torch.bfloat16)
    assert skinny_linear(torch.empty(0, 32, device=device, dtype=torch.bfloat16), weight).shape == (0, 8)


@pytest.mark.parametrize("args, match", [
    (dict(x=(1, 32), w=(8, 32), dtype=torch.float32), "fp16 or bf16"),
    (dict(x=(1, 32), w=(8, 31)), "disagree on K"),
    (dict(x=(65, 32), w=(8, 32)), "1 to 64 rows"),
    (dict(x=(1, 32), w=(8, 32), bias=(7,)), "bias must have shape"),
    (dict(x=(1, 32), w=(32, 8), transposed=True), "contiguous"),
    (dict(x=(2, 32), w=(8, 32), block_n=8), "at least 16"),
    (dict(x=(1, 32), w=(8, 32), block_n=24), "power of two"),
])
def test_rejects_bad_arguments(args, match, device):
    dtype = args.get("dtype", torch.bfloat16)
    x = torch.randn(args["x"], device=device, dtype=dtype)
    weight = torch.randn(args["w"], device=device, dtype=dtype)
    if args.get("transposed"):
        weight = weight.t()
    bias = torch.randn(args["bias"], device=device, dtype=dtype) if "bias" in args else None
    with pytest.raises(ValueError, match=match):
        skinny_linear(x, weight, bias, block_n=args.get("block_n"))


def test_rejects_a_wrong_out(device):
    x = torch.randn(2, 32, device=device, dtype=torch.bfloat16)
    weight = torch.randn(8, 32, device=device, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="out must be"):
        skinny_linear(x, weight, out=torch.empty(2, 9, device=device, dtype=torch.bfloat16))


@pytest.mark.parametrize("m, n, k", [(1, 6144, 2560), (1, 2560, 9728), (8, 1024, 2048),
                                     (16, 22016, 4096), (4, 4096, 11008), (1, 5, 300)])
def test_default_split_is_whole_chunks_and_no_more_than_fills_the_gpu(m, n, k):
    sms = 132
    cfg = choose_config(m, n, k, sms)
    tiles, chunks = -(-n // cfg.block_n), -(-k // cfg.block_k)
    assert 1 <= cfg.split_k <= min(chunks, max(1, sms // tiles))
    assert (cfg.split_k - 1) * -(-chunks // cfg.split_k) < chunks  # no slice is empty


def test_pipeline_stages_fit_in_shared_memory():
    big, small = choose_config(4, 4096, 4096), choose_config(4, 4096, 4096, 84, 99 * 1024)
    assert small.num_stages < big.num_stages
    assert small.num_stages * (small.block_n + 16) * small.block_k * 2 <= 99 * 1024


def test_forced_split_is_evened_out():
    # 10 chunks over 4 slices: 3, 3, 3, 1 -> 4 slices; over 6: 2 each -> 5 slices
    assert choose_config(1, 64, 640, block_k=64, split_k=4).split_k == 4
    assert choose_config(1, 64, 640, block_k=64, split_k=6).split_k == 5
    assert choose_config(1, 64, 640, block_k=64, split_k=99).split_k == 10


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("n, k", [(6144, 2560), (2560, 4096), (19456, 2560), (2560, 9728), (4096, 1024),
                                  (1024, 2048), (6144, 1024), (1024, 3072), (12288, 4096), (4096, 11008)])
def test_serving_shapes(n, k, m, device):
    _run(m, n, k, torch.bfloat16, device, bias=m == 2, workspace=SkinnyLinearWorkspace())


@pytest.mark.gpu
@pytest.mark.parametrize("split_k", [None, 4])
@pytest.mark.parametrize("m", [1, 8])
def test_replays_in_a_cuda_graph(m, split_k, device):
    workspace = SkinnyLinearWorkspace()
    x, weight, bias = _inputs(m, 2560, 9728, torch.bfloat16, device, bias=True)
    out = torch.full((m, 2560), float("nan"), dtype=x.dtype, device=device)
    skinny_linear(x, weight, bias, workspace, out=out, split_k=split_k)  # compiles, makes the workspace
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        skinny_linear(x, weight, bias, workspace, out=out, split_k=split_k)
    for seed in range(3):
        x.copy_(_inputs(m, 1, 9728, torch.bfloat16, device, seed=seed + 1)[0])
        out.fill_(float("nan"))
        graph.replay()
        _check(out, x, weight, bias)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 32, 33])
def test_linear_layers_take_the_kernel_for_a_few_rows(m):
    """corral's Linear runs decode batches of up to 32 rows through skinny_linear, more through cuBLAS."""
    from corral.layers.linear import SKINNY_MAX_ROWS, Linear
    layer = Linear(256, [96, 32], bias=True).to("cuda", torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=256 ** -0.5)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(m, 256, device="cuda", dtype=torch.bfloat16)
    _check(layer(x), x, layer.weight, layer.bias)
    assert (layer.skinny_workspace is not None) == (m <= SKINNY_MAX_ROWS)


def test_a_strided_bias_is_read_right(device):
    x, weight, _ = _inputs(2, 40, 64, torch.bfloat16, device)
    bias = torch.randn(80, device=device).to(torch.bfloat16)[::2]
    _check(skinny_linear(x, weight, bias), x, weight, bias)
