import pluggy

hookspec = pluggy.HookspecMarker("corral")
hookimpl = pluggy.HookimplMarker("corral")


@hookspec
def register_architectures(register):
    """Register model architectures: register("Qwen3ForCausalLM", "module:Class")."""


@hookspec
def register_sources(register):
    """Register model sources: register("hf", SourceClass)."""
