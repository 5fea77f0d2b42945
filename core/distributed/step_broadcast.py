"""Each forward's inputs, from rank 0 (which schedules) to the other ranks (which only compute)."""
from collections.abc import Callable

import torch

from corral.distributed.group import TensorParallelGroup
from corral.kernels.attention_metadata import AttentionMetadata

HEADER = 7  # tokens, sequences, blocks per sequence, sampled rows, max_query_len, max_seq_len, num_decodes
STOP = -1


class StepBroadcast:
    """Per forward, two broadcasts from rank 0: the sizes on the CPU group (seven integers, so a rank can
    wait for the next step however long the engine idles), then every input packed in one int64
    tensor on the device group. Device inputs, not host ones: a multi-step decode's next input
    tokens exist only on rank 0's device."""

    def __init__(self, group: TensorParallelGroup, device: torch.device,
                 on_error: Callable[[RuntimeError], BaseException] | None = None):
        """`on_error`: what rank 0 raises instead of a failed broadcast's error (which rank failed, and why)."""
        self.group, self.device, self.on_error = group, device, on_error

    def send(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata,
             sample_rows: torch.Tensor):
        header = [input_ids.shape[0], metadata.num_seqs, metadata.block_tables.shape[1], sample_rows.shape[0],
                  metadata.max_query_len, metadata.max_seq_len, metadata.num_decodes]
        try:
            self.group.broadcast(torch.tensor(header, dtype=torch.int64), on_cpu=True)
            # positions first and slots at twice the token count: the Triton kernels that read them in place
            # (rotary, the KV store) then see 16-byte aligned pointers whatever the count, as on rank 0
            packed = torch.cat([positions, input_ids, metadata.slot_mapping, metadata.query_start_loc.long(),
                                metadata.seq_lens.long(), metadata.block_tables.long().flatten(),
                                sample_rows.long()])
            self.group.broadcast(packed)
        except RuntimeError as e:
            if self.on_error is None:
                raise
            raise self.on_error(e) from e

    def stop(self):
        self.group.broadcast(torch.full((HEADER,), STOP, dtype=torch.int64), on_cpu=True)

    def receive(self) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor] | None:
        """The next forward's (input_ids, positions, metadata, sample_rows); None when rank 0 stops."""
        header = self.group.broadcast(torch.empty(HEADER, dtype=torch.int64), on_cpu=True).tolist()
        if header[0] == STOP:
            return None
        num_tokens, num_seqs, max_blocks, num_sampled, max_query_len, max_seq_len, num_decodes = header
        sizes = [num_tokens, num_tokens, num_tokens, num_seqs + 1, num_seqs, num_seqs * max_blocks, num_sampled]
        packed = self.group.broadcast(torch.empty(sum(sizes), dtype=torch.int64, device=self.device))
        pos, ids, slots, query_start, lens, tables, rows = packed.split(sizes)
        metadata = AttentionMetadata(slot_mapping=slots, query_start_loc=query_start.int(), seq_lens=lens.int(),
                                     block_tables=tables.view(num_seqs, max_blocks).int(),
                                     max_query_len=max_query_len, max_seq_len=max_seq_len,
                                     num_decodes=num_decodes)
        return ids, pos, metadata, rows
