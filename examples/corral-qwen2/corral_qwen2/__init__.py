"""corral-qwen2: Qwen2 and Qwen2.5 models (Qwen2ForCausalLM) for corral."""
from corral import hookimpl


@hookimpl
def register_architectures(register):
    register("Qwen2ForCausalLM", "corral_qwen2.model:Qwen2ForCausalLM")
