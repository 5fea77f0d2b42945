import pluggy

hookspec = pluggy.HookspecMarker("corral")
hookimpl = pluggy.HookimplMarker("corral")


@hookspec
def register_architectures(register):
    """Register model architectures: register("Qwen3ForCausalLM", "module:Class")."""


@hookspec
def register_sources(register):
    """Register model sources: register("hf", SourceClass)."""


@hookspec
def register_tool_parsers(register):
    """Register tool-call parsers: register("hermes", "module:Class", architectures=[...], chat_template_contains=[...])."""
