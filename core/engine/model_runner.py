from dataclasses import dataclass

import numpy as np
import torch

from corral.backends.base import AttentionBackend
from corral.distributed.step_broadcast import StepBroadcast
from corral.kernels.attention_metadata import AttentionMetadata
from corral.engine.sampler import Sampler, SamplingMetadata
from corral.engine.scheduler import ScheduledRequest, SchedulerOutput
from corral.engine.structured_output import StructuredOutputManager
from corral.engine.token_history import TokenHistory
from corral.layers.attention import Attention, ForwardContext
from corral.layers.linear import Linear


@dataclass(slots=True)
class InFlight:
    """A launched step: its sampled tokens are on their way to pinned host memory."""

    requests: list  # the requests that sampled, in row order
    sampled: torch.Tensor | None  # [B, num_steps] on the device: the next continuation reads its last column
    host: torch.Tensor | None  # the same, on the host once `copied` has fired
    copied: list[torch.cuda.Event] | None  # one per step: its tokens are on the host
    sampler_output: object | None  # kept for logprobs (single steps only)
    rows: list[int] | None = None  # the row of each request that sampled, in scheduled order
    pending: tuple | None = None  # a forward whose sampling is not enqueued yet (ModelRunner.sample)

    def result(self) -> "RunnerOutput":
        """Every step's tokens, once the last step's are on the host."""
        if self.copied is not None:
            self.copied[-1].synchronize()
        return self._output(self.host.tolist())

    def step_result(self, step: int) -> "RunnerOutput":
        """Step `step`'s tokens (one per request), as soon as they are on the host."""
        if self.copied is not None:
            self.copied[step].synchronize()
        return self._output(self.host[:, step:step + 1].tolist())

    def _output(self, tokens: list[list[int]]) -> "RunnerOutput":
        logprobs = ModelRunner._logprobs(self.requests, self.sampler_output) if self.sampler_output else None
        if self.rows is not None:
            tokens = [tokens[r] for r in self.rows]
            logprobs = [logprobs[r] for r in self.rows] if logprobs is not None else None
        return RunnerOutput(tokens, logprobs)


@dataclass(slots=True)
class RunnerOutput:
    """One entry per request that sampled, in scheduled order."""

    sampled_token_ids: list[list[int]]  # several per request after a multi-step decode
    logprobs: list[list[tuple[int, float, int]] | None] | None = None  # per request: (token, logprob, rank)


def _num_decodes(scheduled: list[ScheduledRequest]) -> int:
    """The leading one-token queries of a mixed batch; 0 when it has none or holds nothing else."""
    n = next((i for i, s in enumerate(scheduled) if s.num_new_tokens > 1), len(scheduled))
    return n if n < len(scheduled) else 0


class ModelRunner:
    """Turns a SchedulerOutput into one flat batch, runs the model and samples on the device."""

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], backend: AttentionBackend,
                 block_size: int, device: torch.device, vocab_size: int, seed: int = 0,
                 structured_output: StructuredOutputManager | None = None, steps: StepBroadcast | None = None,
                 history: TokenHistory | None = None):
        """`steps`: rank 0 of a tensor-parallel engine sends each forward's inputs to the other ranks.
        `history`: where penalized requests' tokens stay on the device (without it, a penalized request's
        step must not be launched before the host has the step before's token)."""
        self.model = model
        self.history = history
        self.steps = steps
        self.structured_output = structured_output
        self.backend = backend
        self.block_size = block_size
        self.device = device
        self.vocab_size = vocab_size
        self.sampler = Sampler(seed)
        self.graph_runner = None
        self.staging: torch.Tensor | None = None  # pinned host buffer for the step's inputs
        self.staging_copied: torch.cuda.Event | None = None  # its last copy to the device is done
        attention_layers = [m for m in model.modules() if isinstance(m, Attention)]
        for layer, cache in zip(attention_layers, kv_caches, strict=True):
            layer.kv_cache = cache
        if device.type == "cuda":
            from corral.kernels.gemv import SkinnyLinearWorkspace
            shared = SkinnyLinearWorkspace()  # one stream runs the layers in turn: one split-K scratch serves all
            for module in model.modules():
                if isinstance(module, Linear):
                    module.skinny_workspace = shared

    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int):
        from corral.engine.cuda_graphs import CUDAGraphRunner
        max_blocks = -(-max_model_len // self.block_size)
        self.graph_runner = CUDAGraphRunner(self.model, self.backend, max_num_seqs, max_blocks, self.device)
        self.graph_runner.capture()

    def prepare(self, scheduled: list[ScheduledRequest], previous: InFlight | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """The batch of `scheduled`, one row range each in that order: host arrays packed into one
        tensor, copied to the device once, then split. With `previous` (a continuation), the input
        token of each request `from_previous` is the last one `previous` sampled for it, read on the
        device: the host does not know it yet."""
        num_seqs = len(scheduled)
        max_blocks = max(len(s.block_ids) for s in scheduled)
        block_tables = np.zeros((num_seqs, max_blocks), dtype=np.int64)
        input_ids, positions, query_start_loc, seq_lens, sample_rows = [], [], [0], [], []
        fill_at, fill_from = [], []  # input positions and the rows of `previous` whose tokens go there
        row_of = {id(r): i for i, r in enumerate(previous.requests)} if previous is not None else {}
        for i, s in enumerate(scheduled):
            start, end = s.num_computed_tokens, s.num_computed_tokens + s.num_new_tokens
            if s.from_previous:
                fill_at.append(len(input_ids))
                fill_from.append(row_of[id(s.request)])
                input_ids.append(0)
            else:
                input_ids.extend(s.request.all_token_ids[start:end])
            positions.extend(range(start, end))
            query_start_loc.append(query_start_loc[-1] + s.num_new_tokens)
            seq_lens.append(end)
            block_tables[i, :len(s.block_ids)] = s.block_ids
            if s.samples:
                sample_rows.append(query_start_loc[-1] - 1)
        num_tokens = len(input_ids)
        all_from_previous = len(fill_at) == num_tokens  # a decode continuation: one gather
        if all_from_previous:
            input_ids, fill_at, fill_from = fill_from, [], []
        # positions first: kernels read them in place, and a view at an odd int64 offset would
        # compile them a second time for the unaligned pointer
        host = np.concatenate([np.array(positions + input_ids + query_start_loc + seq_lens + sample_rows + fill_at
                                        + fill_from, dtype=np.int64), block_tables.ravel()])
        packed = torch.from_numpy(host)
        if self.device.type == "cuda":
            if self.staging is None or self.staging.numel() < host.size:
                self.staging = torch.empty(max(host.size, 1 << 20), dtype=torch.long, pin_memory=True)
            if self.staging_copied is not None:
                self.staging_copied.synchronize()  # a launched step may not have read it yet
            staged = self.staging[:host.size]
            staged.numpy()[:] = host
            packed = staged.to(self.device, non_blocking=True)
            self.staging_copied = torch.cuda.Event()
            self.staging_copied.record()
        sizes = [num_tokens, num_tokens, num_seqs + 1, num_seqs, len(sample_rows), len(fill_at), len(fill_from),
                 block_tables.size]
        pos, ids, query_start, lens, rows, at, source, tables = packed.split(sizes)
        if all_from_previous:
            ids = previous.sampled[:, -1][ids]
        elif fill_at:
            ids[at] = previous.sampled[:, -1][source]
        tables = tables.view(num_seqs, max_blocks).int()
        query_lens = query_start[1:] - query_start[:-1]
        seq_index = torch.repeat_interleave(torch.arange(num_seqs, device=self.device), query_lens,
                                            output_size=num_tokens)
        slot_mapping = tables[seq_index, pos // self.block_size].long() * self.block_size + pos % self.block_size
        metadata = AttentionMetadata(slot_mapping=slot_mapping, query_start_loc=query_start.int(),
                                     seq_lens=lens.int(), block_tables=tables,
                                     max_query_len=max(s.num_new_tokens for s in scheduled),
                                     max_seq_len=max(seq_lens), num_decodes=_num_decodes(scheduled))
        return ids, pos, metadata, rows

    def _forward(self, input_ids, positions, metadata, sample_rows) -> torch.Tensor:
        """Logits of the sampled rows; a CUDA graph computes those of decode batches."""
        if self.steps is not None:
            self.steps.send(input_ids, positions, metadata, sample_rows)
        if self.graph_runner is not None and self.graph_runner.can_run(metadata, input_ids.shape[0],
                                                                         sample_rows.shape[0]):
            return self.graph_runner.run(input_ids, positions, metadata)
        hidden_states = self.model(input_ids, positions, ForwardContext(metadata, self.backend))
        return self.model.compute_logits(hidden_states[sample_rows])

    def execute(self, out: SchedulerOutput, num_steps: int = 1) -> RunnerOutput:
        return self.launch(out, num_steps).result()

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, num_steps: int = 1, previous: InFlight | None = None,
               defer_sampling: bool = False) -> InFlight:
        """One forward and sample, enqueued; with num_steps > 1 (decode-only batches whose KV has
        room), each sampled token is fed straight back on the device. Nothing here waits for the
        device, so the host can prepare the next step while this one runs. With defer_sampling only
        the forward is enqueued, and `sample` finishes the step once the host has what the sampling
        needs (each grammar's token of the step before)."""
        # decodes first, for the decode kernel (AttentionMetadata.num_decodes); then longest sequences first:
        # attention launches its programs in row order, and the longest first leave the short ones for the
        # tail (docs/results/2026-11-b5-kernels.md)
        scheduled = sorted(out.scheduled, key=lambda s: (s.num_new_tokens > 1,
                                                         -(s.num_computed_tokens + s.num_new_tokens)))
        input_ids, positions, metadata, sample_rows = self.prepare(scheduled, previous)
        requests = [s.request for s in scheduled if s.samples]
        num_tokens = [s.num_computed_tokens + s.num_new_tokens for s in scheduled if s.samples]
        row_of = {id(r): i for i, r in enumerate(requests)}
        rows = [row_of[id(s.request)] for s in out.scheduled if s.samples]
        logits = self._forward(input_ids, positions, metadata, sample_rows)
        if not requests:
            return InFlight([], torch.empty(0, 1, dtype=torch.long), torch.empty(0, 1, dtype=torch.long), None, None)
        launched = InFlight(requests, None, None, None, None, rows,
                            pending=(logits, positions, metadata, sample_rows, num_steps, num_tokens))
        if not defer_sampling:
            self.sample(launched)
        return launched

    @torch.inference_mode()
    def sample(self, launched: InFlight):
        """Enqueue the sampling of a launched forward (and the further steps of a multi-step group)."""
        logits, positions, metadata, sample_rows, num_steps, num_tokens = launched.pending
        launched.pending = None
        requests = launched.requests
        sampling = SamplingMetadata.build(requests, self.vocab_size, self.device, num_tokens, self.history)
        on_gpu = self.device.type == "cuda"
        if self.structured_output is not None:  # filled on the host while the device runs the forward
            if (grammar := self.structured_output.bitmask(requests, pinned=on_gpu)) is not None:
                sampling.grammar_bitmask = grammar[0].to(self.device, non_blocking=True)
                sampling.grammar_rows, sampling.grammar_vocab_size = grammar[1], grammar[2]
        result = self.sampler(logits, sampling)
        if sampling.history_rows is not None:
            self.history.record(sampling.history_rows, num_tokens, result.sampled_token_ids)
        steps = [result.sampled_token_ids]
        # each step's tokens go to pinned host memory as soon as that step ends, so they can stream one by one
        host = torch.empty((num_steps, len(requests)), dtype=steps[0].dtype, pin_memory=True) if on_gpu else None
        copied = [self._copy_to_host(steps[0], host[0])] if on_gpu else None
        for i in range(1, num_steps):
            positions = positions + 1
            metadata = self._advance(metadata, positions)
            logits = self._forward(steps[-1], positions, metadata, sample_rows)
            steps.append(self.sampler(logits, sampling).sampled_token_ids)
            if on_gpu:
                copied.append(self._copy_to_host(steps[-1], host[i]))
        launched.sampled = torch.stack(steps, dim=1)
        launched.host = host.T if on_gpu else launched.sampled
        launched.copied = copied
        launched.sampler_output = result if num_steps == 1 else None

    @staticmethod
    def _copy_to_host(tokens: torch.Tensor, host: torch.Tensor) -> torch.cuda.Event:
        host.copy_(tokens, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return copied

    def _advance(self, metadata: AttentionMetadata, positions: torch.Tensor) -> AttentionMetadata:
        """The metadata of the next decode step: every sequence one token longer."""
        rows = torch.arange(positions.shape[0], device=positions.device)
        blocks = metadata.block_tables[rows, positions // self.block_size].long()
        return AttentionMetadata(slot_mapping=blocks * self.block_size + positions % self.block_size,
                                 query_start_loc=metadata.query_start_loc, seq_lens=metadata.seq_lens + 1,
                                 block_tables=metadata.block_tables, max_query_len=1,
                                 max_seq_len=metadata.max_seq_len + 1)

    @staticmethod
    def _logprobs(requests, result) -> list | None:
        if result.logprobs is None:
            return None
        ids, values, ranks = result.logprob_token_ids.tolist(), result.logprobs.tolist(), result.sampled_ranks.tolist()
        per_request = []
        for i, request in enumerate(requests):
            k = request.sampling_params.logprobs
            if k is None:
                per_request.append(None)
                continue
            entries = [(ids[i][0], values[i][0], ranks[i])]
            entries += [(ids[i][j], values[i][j], j) for j in range(1, k + 1)]
            per_request.append(entries)
        return per_request
