"""corral: serve several LLMs side by side behind one OpenAI-compatible API."""
from corral.registry.hookspecs import hookimpl
from corral.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "hookimpl"]


def __getattr__(name):
    if name == "LLM":  # keeps `import corral` light for plugins and the API process
        from corral.llm import LLM
        return LLM
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
