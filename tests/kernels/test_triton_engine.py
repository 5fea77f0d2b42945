"""The engine on the Triton attention backend (the interpreter on a CPU): mixed batches, whose decodes go
to the decode kernel and whose prompt chunks go to the varlen kernel, give the torch backend's tokens."""
import pytest

from corral import LLM, SamplingParams
from corral.engine.profiling import warm_up_kernels


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


def test_the_kernel_warm_up_runs_on_caches_of_its_own_and_leaves_the_engine_as_it_was(tiny_model_dirs):
    from corral.layers.attention import Attention
    llm = LLM(str(tiny_model_dirs["llama"]), attention_backend="triton", max_model_len=128)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = [[5, 6, 7] * 6, list(range(10, 40))]
    before = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    core = llm.engine.core
    layers = [m for m in core.runner.model.modules() if isinstance(m, Attention)]
    caches = [layer.kv_cache for layer in layers]
    warm_up_kernels(core.runner.model, core.runner.backend, core.config, core.model_config)
    assert all(layer.kv_cache is cache for layer, cache in zip(layers, caches))
    # the prompts' blocks are prefix-cache hits now: their K/V is read back as the first run left it
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == before
    assert core.kv_cache_manager.num_hit_tokens > 0


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_an_fp8_kv_cache_on_the_triton_backend_gives_the_torch_backends_tokens(arch, tiny_model_dirs):
    model = str(tiny_model_dirs[arch])
    prompts = [[5, 6, 7], list(range(10, 40)), list(range(50, 95))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    settings = dict(max_model_len=128, max_num_batched_tokens=16, enforce_eager=True, kv_cache_dtype="fp8")
    expected = LLM(model, attention_backend="torch", **settings).generate(prompts, params)
    actual = LLM(model, attention_backend="triton", **settings).generate(prompts, params)
    assert [o.outputs[0].token_ids for o in actual] == [o.outputs[0].token_ids for o in expected]
