import contextlib
import gc
import logging

import torch

from corral.backends.base import AttentionBackend
from corral.kernels.attention_metadata import AttentionMetadata
from corral.layers.attention import ForwardContext

logger = logging.getLogger(__name__)


def batch_size_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16, up to max_num_seqs or 512; larger batches run eagerly."""
    top = min(max_num_seqs, 512)
    return [b for b in (1, 2, 4, 8, *range(16, 513, 16)) if b < top] + [top]


class CUDAGraphRunner:
    """Decode steps (one query token per sequence) replayed from CUDA graphs captured per
    batch-size bucket. Inputs are copied into static buffers; padded rows write no KV."""

    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, max_num_seqs: int,
                 max_blocks_per_seq: int, device: torch.device):
        self.model, self.backend = model, backend
        self.buckets = batch_size_buckets(max_num_seqs)
        n = self.buckets[-1]
        with torch.device(device):
            self.input_ids = torch.zeros(n, dtype=torch.long)
            self.positions = torch.zeros(n, dtype=torch.long)
            self.slot_mapping = torch.full((n,), -1, dtype=torch.long)
            self.seq_lens = torch.ones(n, dtype=torch.int32)
            self.query_start_loc = torch.arange(n + 1, dtype=torch.int32)
            self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32)
            self.logits = torch.zeros(n, model.config.vocab_size, dtype=next(model.parameters()).dtype)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def metadata(self, batch_size: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:batch_size], self.query_start_loc[:batch_size + 1],
                                 self.seq_lens[:batch_size], self.block_tables[:batch_size],
                                 max_query_len=1, max_seq_len=1)

    @torch.inference_mode()
    def capture(self):
        # no collection mid-capture: a collected engine's virtual memory is given back with a device sync and
        # driver calls that a capture does not allow (corral.engine.virtual_memory)
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._capture()
        finally:
            if was_enabled:
                gc.enable()

    def _capture(self):
        for bs in reversed(self.buckets):
            graph = torch.cuda.CUDAGraph()
            ctx = ForwardContext(self.metadata(bs), self.backend)
            for capturing in (False, True):  # a warm-up run, then the capture
                with torch.cuda.graph(graph, self.pool) if capturing else contextlib.nullcontext():
                    hidden = self.model(self.input_ids[:bs], self.positions[:bs], ctx)
                    self.logits[:bs] = self.model.compute_logits(hidden)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batch sizes %s", self.buckets)

    def can_run(self, metadata: AttentionMetadata, num_tokens: int, num_sampled: int) -> bool:
        """A batch of one token a sequence, every one sampled (a prompt's 1-token chunk that is not
        its last has one token but samples nothing), within the captured sizes."""
        return (metadata.is_decode_only and num_sampled == num_tokens and num_tokens <= self.buckets[-1]
                and metadata.block_tables.shape[1] <= self.block_tables.shape[1])

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """Logits of the n sequences (every decode row is sampled), valid until the next replay."""
        n = input_ids.shape[0]
        bs = next(b for b in self.buckets if b >= n)
        self.input_ids[:n] = input_ids
        self.positions[:n] = positions
        self.slot_mapping[:n] = metadata.slot_mapping
        self.slot_mapping[n:bs] = -1
        self.seq_lens[:n] = metadata.seq_lens
        self.seq_lens[n:bs] = 1
        self.block_tables[n:bs, 0] = 0  # a padded row reads one slot: of block 0, always backed (kv_memory)
        width = metadata.block_tables.shape[1]
        self.block_tables[:n, :width] = metadata.block_tables
        self.graphs[bs].replay()
        return self.logits[:n]
