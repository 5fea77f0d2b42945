"""B4's saturated load on the engine alone (benchmarks.step_phases --workload b4): the closed loop."""
from benchmarks.step_phases import closed_loop
from corral import LLM, SamplingParams
from corral.engine.request import Request


def test_closed_loop_keeps_at_most_in_flight_requests_and_replaces_each_that_finishes(tiny_model_dirs):
    core = LLM(str(tiny_model_dirs["qwen3"]), max_model_len=128).engine.core
    # lengths apart, so that requests finish at different steps and are replaced one at a time too
    requests = [Request(str(i), [5 + i, 6, 7], SamplingParams(max_tokens=2 + i % 5, ignore_eos=True))
                for i in range(11)]
    in_engine, finished = [], []

    def step():
        in_engine.append(len(core.scheduler.running) + len(core.scheduler.waiting))
        outputs = core.step()
        finished.extend(o.request_id for o in outputs if o.finish_reason is not None)
        return outputs

    num_out = closed_loop(core, requests, 4, step)
    assert num_out == sum(r.sampling_params.max_tokens for r in requests)
    assert sorted(finished, key=int) == [r.request_id for r in requests]
    assert max(in_engine) == 4 and in_engine[0] == 4
    assert not core.has_unfinished_requests()
