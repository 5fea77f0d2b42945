import torch
from torch import nn

from corral.distributed.group import building_group
from corral.layers.linear import read_part, shape_of


class VocabParallelEmbedding(nn.Module):
    """Each rank holds an equal run of the vocabulary's rows, padded so that the ranks divide it
    (padded rows stay zero); a token's row comes from the rank that holds it, by an all-reduce."""

    def __init__(self, vocab_size: int, hidden_size: int, weight: nn.Parameter | None = None):
        super().__init__()
        self.tp = building_group()
        self.vocab_size = vocab_size
        self.rows = -(-vocab_size // self.tp.size)
        self.start = self.tp.rank * self.rows
        if weight is None:
            weight = nn.Parameter(torch.zeros(self.rows, hidden_size), requires_grad=False)
            weight.weight_loader = self.weight_loader
        self.weight = weight

    def weight_loader(self, param: nn.Parameter, source, shard_id=None):
        rows, width = shape_of(source)
        if (rows, width) != (self.vocab_size, param.shape[1]):
            raise ValueError(f"expected a tensor of shape {(self.vocab_size, param.shape[1])}, got {(rows, width)}")
        length = max(0, min(self.rows, rows - self.start))
        param.data[:length].copy_(read_part(source, 0, self.start, length))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return nn.functional.embedding(input_ids, self.weight)
        held = (input_ids >= self.start) & (input_ids < self.start + self.rows)
        rows = nn.functional.embedding((input_ids - self.start) * held, self.weight)
        return self.tp.all_reduce(rows * held.unsqueeze(-1).to(rows.dtype))


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for the rows that are sampled: each rank's part of the vocabulary, gathered on every
    rank (the padding cut off). Shares the embedding's weight when tied."""

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabParallelEmbedding | None = None):
        super().__init__(vocab_size, hidden_size, tied_to.weight if tied_to is not None else None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.linear(hidden_states, self.weight)
        if self.tp.size == 1:
            return logits
        return self.tp.all_gather(logits)[..., :self.vocab_size]
