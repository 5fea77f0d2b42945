"""The engine of a model served for embeddings: each step prefills prompt chunks (scheduled like any
prompt, chunked by the token budget) and pools the hidden states the chunks produce; a request whose
last chunk ran finishes with its vector. There is no decode phase, no sampling, no CUDA graph.

What pooling needs across chunks stays on the request (`pooling_state`): the first token's state for
cls pooling, a running float32 sum for mean pooling; last-token pooling needs nothing until the end."""
import numpy as np
import torch

from corral.engine.model_runner import ModelRunner
from corral.engine.request import Request, RequestStatus
from corral.engine.scheduler import Scheduler, SchedulerOutput
from corral.layers.attention import ForwardContext
from corral.outputs import EngineCoreOutput
from corral.pooling_params import PoolerConfig


def as_embedding_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without its LM head: embedding checkpoints (Qwen3-Embedding) carry none."""
    model.lm_head = None
    return model


class PoolingRunner:
    def __init__(self, runner: ModelRunner, config: PoolerConfig):
        self.runner, self.config = runner, config

    def step(self, scheduler: Scheduler) -> list[EngineCoreOutput]:
        """One step: schedule, run, pool; the requests whose prompts are done finish with their vectors."""
        out = scheduler.schedule()
        if not out.scheduled:
            return []
        outputs = []
        for request, vector in self.execute(out):
            scheduler.finish(request, RequestStatus.FINISHED_STOPPED)
            outputs.append(EngineCoreOutput(request.request_id, [], finish_reason="stop",
                                            num_cached_tokens=request.num_cached_tokens or 0, pooling_output=vector))
        return outputs

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> list[tuple[Request, np.ndarray]]:
        """Runs the scheduled chunks; returns the vectors of the requests whose prompts are now done."""
        runner = self.runner
        input_ids, positions, metadata, _ = runner.prepare(out.scheduled)
        hidden = runner.model(input_ids, positions, ForwardContext(metadata, runner.backend))
        starts = np.cumsum([0] + [s.num_new_tokens for s in out.scheduled]).tolist()
        kind = self.config.pooling_type
        if kind == "mean":
            sums = self._chunk_sums(hidden, out, starts)
        done, pooled = [], []
        for i, s in enumerate(out.scheduled):
            request = s.request
            first = s.num_computed_tokens == 0  # also after a preemption: the prompt is computed again
            if kind == "cls" and first:
                request.pooling_state = hidden[starts[i]].float()
            elif kind == "mean":
                request.pooling_state = sums[i] if first else request.pooling_state + sums[i]
            if not s.samples:
                continue
            done.append(request)
            if kind == "last":
                pooled.append(hidden[starts[i + 1] - 1].float())
            elif kind == "cls":
                pooled.append(request.pooling_state)
            else:
                pooled.append(request.pooling_state / request.num_prompt_tokens)
            request.pooling_state = None
        if not done:
            return []
        vectors = self._finish(torch.stack(pooled), done).cpu().numpy()
        return [(request, vectors[i, :self._dimensions(request)]) for i, request in enumerate(done)]

    @staticmethod
    def _chunk_sums(hidden: torch.Tensor, out: SchedulerOutput, starts: list[int]) -> torch.Tensor:
        """The float32 sum of each scheduled chunk's hidden states, one row per chunk."""
        lengths = torch.tensor([s.num_new_tokens for s in out.scheduled], device=hidden.device)
        rows = torch.repeat_interleave(torch.arange(len(out.scheduled), device=hidden.device), lengths,
                                       output_size=starts[-1])
        sums = torch.zeros(len(out.scheduled), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
        return sums.index_add_(0, rows, hidden.float())

    def _dimensions(self, request: Request) -> int:
        return request.pooling_params.dimensions or self.config.hidden_size

    def _finish(self, pooled: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """Each vector truncated to the dimensions its request asked for (zeros past them), then
        normalised when the model normalises."""
        dims = [self._dimensions(r) for r in requests]
        if any(d < pooled.shape[-1] for d in dims):
            keep = torch.arange(pooled.shape[-1], device=pooled.device) < torch.tensor(dims, device=pooled.device)[:, None]
            pooled = pooled * keep
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled
