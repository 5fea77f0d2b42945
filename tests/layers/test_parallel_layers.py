"""The tensor-parallel layers against torch's plain functions on the whole weights: two ranks over a real
gloo group (one spawned process each), and a rank's weight loading, which reads only its part of a file."""
import datetime
import multiprocessing
import os

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from corral.distributed.group import TensorParallelGroup, building, connect
from corral.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from corral.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

HIDDEN, HEAD_DIM, VOCAB = 24, 8, 37  # a vocabulary that two ranks do not divide


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    def rand(*shape):
        return torch.randn(*shape, generator=g)
    return {"q": rand(4 * HEAD_DIM, HIDDEN), "k": rand(1 * HEAD_DIM, HIDDEN), "v": rand(1 * HEAD_DIM, HIDDEN),
            "q_bias": rand(4 * HEAD_DIM), "k_bias": rand(HEAD_DIM), "v_bias": rand(HEAD_DIM),
            "gate": rand(20, HIDDEN), "up": rand(20, HIDDEN), "down": rand(HIDDEN, 20), "down_bias": rand(HIDDEN),
            "embed": rand(VOCAB, HIDDEN), "x": rand(5, HIDDEN), "ids": torch.tensor([0, 17, 18, 19, 36, 5])}


def check_rank(rank: int, port: int):
    """Everything one rank checks; runs in a process of its own (the test's process hosts the store)."""
    store = dist.TCPStore("127.0.0.1", port, None, False, timeout=datetime.timedelta(seconds=60))
    group = connect(rank, 2, store, torch.device("cpu"))
    w = weights()
    x = w["x"]
    with building(group):
        qkv = QKVParallelLinear(HIDDEN, HEAD_DIM, num_heads=4, num_kv_heads=1, bias=True)
        gate_up = MergedColumnParallelLinear(HIDDEN, [20, 20])
        down = RowParallelLinear(20, HIDDEN, bias=True)
        embed = VocabParallelEmbedding(VOCAB, HIDDEN)
        head = ParallelLMHead(VOCAB, HIDDEN)
    for shard in "qkv":
        qkv.weight.weight_loader(qkv.weight, w[shard], shard)
        qkv.bias.weight_loader(qkv.bias, w[f"{shard}_bias"], shard)
    gate_up.weight.weight_loader(gate_up.weight, w["gate"], 0)
    gate_up.weight.weight_loader(gate_up.weight, w["up"], 1)
    down.weight.weight_loader(down.weight, w["down"])
    down.bias.weight_loader(down.bias, w["down_bias"])
    embed.weight.weight_loader(embed.weight, w["embed"])
    head.weight.weight_loader(head.weight, w["embed"])

    # column-parallel: this rank's heads (two of four q heads, the one KV head replicated) and MLP rows
    q, k, v = qkv(x).split([2 * HEAD_DIM, HEAD_DIM, HEAD_DIM], dim=-1)
    mine = slice(rank * 2 * HEAD_DIM, (rank + 1) * 2 * HEAD_DIM)
    torch.testing.assert_close(q, torch.nn.functional.linear(x, w["q"], w["q_bias"])[:, mine])
    torch.testing.assert_close(k, torch.nn.functional.linear(x, w["k"], w["k_bias"]))
    torch.testing.assert_close(v, torch.nn.functional.linear(x, w["v"], w["v_bias"]))
    gate, up = gate_up(x).chunk(2, dim=-1)
    torch.testing.assert_close(gate, torch.nn.functional.linear(x, w["gate"])[:, rank * 10:(rank + 1) * 10])
    torch.testing.assert_close(up, torch.nn.functional.linear(x, w["up"])[:, rank * 10:(rank + 1) * 10])
    # row-parallel: this rank's columns of the input, summed over ranks, the bias once
    h = torch.randn(5, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(down(h[:, rank * 10:(rank + 1) * 10]),
                               torch.nn.functional.linear(h, w["down"], w["down_bias"]))
    # vocabulary-parallel: rows from whichever rank holds them, every logit gathered, padding cut off
    torch.testing.assert_close(embed(w["ids"]), torch.nn.functional.embedding(w["ids"], w["embed"]))
    logits = head(x)
    assert logits.shape == (5, VOCAB)
    torch.testing.assert_close(logits, torch.nn.functional.linear(x, w["embed"]))
    group.min(0)  # both ranks are done with the groups before either leaves
    os._exit(0)  # without gloo's teardown, which aborts a rank whose peer has already closed its sockets


def test_parallel_layers_on_two_ranks_equal_the_plain_functions_on_the_whole_weights():
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False)
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=check_rank, args=(rank, store.port)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(60)
    for process in ranks:
        process.kill()  # one that still waits for a rank that failed
    assert [p.exitcode for p in ranks] == [0, 0]


class RecordedSlice:
    """A safetensors slice that records what is read from it."""

    def __init__(self, part):
        self.part, self.reads = part, []

    def get_shape(self):
        return self.part.get_shape()

    def __getitem__(self, index):
        self.reads.append(index)
        return self.part[index]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_reads_only_its_shard_of_each_weight(tmp_path, rank):
    w = weights()
    save_file({k: w[k] for k in ("q", "k", "down", "embed")}, tmp_path / "model.safetensors")
    with building(TensorParallelGroup(rank, 2)):
        qkv = QKVParallelLinear(HIDDEN, HEAD_DIM, num_heads=4, num_kv_heads=1)
        down = RowParallelLinear(20, HIDDEN)
        embed = VocabParallelEmbedding(VOCAB, HIDDEN)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        q, k, d, e = (RecordedSlice(f.get_slice(name)) for name in ("q", "k", "down", "embed"))
        qkv.weight.weight_loader(qkv.weight, q, "q")
        qkv.weight.weight_loader(qkv.weight, k, "k")
        down.weight.weight_loader(down.weight, d)
        embed.weight.weight_loader(embed.weight, e)
    rows = slice(rank * 2 * HEAD_DIM, (rank + 1) * 2 * HEAD_DIM)
    assert q.reads == [(rows,)] and k.reads == [(slice(0, HEAD_DIM),)]
    assert d.reads == [(slice(None), slice(rank * 10, rank * 10 + 10))]
    assert e.reads == [(slice(rank * 19, rank * 19 + (19 if rank == 0 else 18)),)]
    torch.testing.assert_close(qkv.weight[:2 * HEAD_DIM], w["q"][rows])
    torch.testing.assert_close(down.weight, w["down"][:, rank * 10:rank * 10 + 10])
    torch.testing.assert_close(embed.weight[:VOCAB - 19 * rank], w["embed"][rank * 19:rank * 19 + 19])
    if rank == 1:
        assert not embed.weight[18:].any()  # the padding row
