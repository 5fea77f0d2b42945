"""CUDAGraphRunner's choice of batches and its static buffers, on the CPU: each "graph" replays the
captured forward eagerly on the runner's buffers, so everything but the CUDA graph itself runs."""

from corral import LLM, SamplingParams
from corral.backends.base import AttentionMetadata
from corral.engine.cuda_graphs import CUDAGraphRunner
from corral.engine.request import Request
from corral.layers.attention import ForwardContext


class EagerReplay:
    def __init__(self, runner: CUDAGraphRunner, batch_size: int):
        self.runner, self.batch_size = runner, batch_size

    def replay(self):
        r, bs = self.runner, self.batch_size
        md = r.metadata(bs)  # the torch backend reads max_seq_len, which a graph does not fix
        md = AttentionMetadata(md.slot_mapping, md.query_start_loc, md.seq_lens, md.block_tables, 1,
                               int(md.seq_lens.max()))
        hidden = r.model(r.input_ids[:bs], r.positions[:bs], ForwardContext(md, r.backend))
        r.logits[:bs] = r.model.compute_logits(hidden)


class CPUGraphRunner(CUDAGraphRunner):
    def capture(self):
        self.graphs = {bs: EagerReplay(self, bs) for bs in self.buckets}


def run(model_dir, graphs: bool) -> dict[str, list[int]]:
    """Request a decodes while b's prompt arrives in 1-token chunks (a budget of 2 tokens a step):
    steps of one token per sequence in which b's row samples nothing."""
    core = LLM(str(model_dir), device="cpu", max_model_len=256, max_num_batched_tokens=2,
               num_scheduler_steps=1).engine.core
    if graphs:
        runner = core.runner
        runner.graph_runner = CPUGraphRunner(runner.model, runner.backend, core.config.max_num_seqs, 16,
                                             runner.device)
        runner.graph_runner.capture()
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    core.add_request(Request("a", [5, 6, 7], params))
    tokens = {"a": [], "b": []}
    for step in range(40):
        if step == 3:
            core.add_request(Request("b", [9, 10, 11, 12], params))
        for output in core.step():
            tokens[output.request_id] += output.new_token_ids
        if step > 3 and not core.has_unfinished_requests():
            break
    return tokens


def test_a_decode_batch_with_a_row_that_samples_nothing_runs_eagerly(tiny_model_dirs):
    with_graphs = run(tiny_model_dirs["qwen3"], graphs=True)
    assert with_graphs == run(tiny_model_dirs["qwen3"], graphs=False)
    assert [len(t) for t in with_graphs.values()] == [8, 8]
