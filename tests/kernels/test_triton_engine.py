"""The engine on the Triton attention backend (the interpreter on a CPU): mixed batches, whose decodes go
to the decode kernel and whose prompt chunks go to the varlen kernel, give the torch backend's tokens."""
from corral import LLM, SamplingParams


def test_mixed_batches_on_the_triton_backend_give_the_torch_backends_tokens(tiny_model_dirs):
    model = str(tiny_model_dirs["qwen3"])
    prompts = [[5, 6, 7], list(range(10, 40)), [9, 9], list(range(50, 95))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    settings = dict(max_model_len=128, max_num_batched_tokens=16, enforce_eager=True)  # prompts go in chunks
    expected = LLM(model, attention_backend="torch", **settings).generate(prompts, params)
    llm = LLM(model, attention_backend="triton", **settings)
    launch, mixed = llm.engine.core.runner.launch, []

    def counted(out, *args, **kwargs):
        lengths = {s.num_new_tokens > 1 for s in out.scheduled}
        mixed.append(lengths == {True, False})
        return launch(out, *args, **kwargs)

    llm.engine.core.runner.launch = counted
    actual = llm.generate(prompts, params)
    assert any(mixed)
    assert [o.outputs[0].token_ids for o in actual] == [o.outputs[0].token_ids for o in expected]
