"""The batch layout every attention kernel and backend reads."""
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    """The flat batch as attention sees it. T tokens from B sequences, laid end to end.

    Sequence i owns query rows query_start_loc[i]:query_start_loc[i+1]; those are its last
    query_len tokens, so token j of them sits at position seq_lens[i] - query_len + j.
    The KV cache is [2, num_blocks, block_size, num_kv_heads, head_dim] per layer; token at
    position p of sequence i lives in block block_tables[i, p // block_size], row p % block_size.
    slot_mapping[t] = block * block_size + row is where token t's new K/V are written (-1: skip).
    """

    slot_mapping: torch.Tensor      # [T] int64
    query_start_loc: torch.Tensor   # [B + 1] int32
    seq_lens: torch.Tensor          # [B] int32, context + query tokens
    block_tables: torch.Tensor      # [B, max_blocks] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    num_decodes: int = 0            # a mixed batch lists its one-token queries first: this many sequences

    def decodes(self) -> "AttentionMetadata":
        """The leading num_decodes sequences (their query rows stay where they are in the batch)."""
        n = self.num_decodes
        return AttentionMetadata(self.slot_mapping, self.query_start_loc[:n + 1], self.seq_lens[:n],
                                 self.block_tables[:n], 1, self.max_seq_len)

    def prefills(self) -> "AttentionMetadata":
        """The sequences after the leading num_decodes."""
        n = self.num_decodes
        return AttentionMetadata(self.slot_mapping, self.query_start_loc[n:], self.seq_lens[n:],
                                 self.block_tables[n:], self.max_query_len, self.max_seq_len)

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1
