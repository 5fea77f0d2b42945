"""What the API process reads from a model's directory: its input processor (tokenizer, EOS ids,
context length, sampling defaults), reasoning parser and tool-call parser. The weights stay with the
engine process."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from corral.config import read_hf_config
from corral.engine.input_processor import InputProcessor
from corral.model_config import positions_of
from corral.pooling_params import pooler_config
from corral.server.config import ModelSpec
from corral.server.tool_calling import template_shows_tools

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelFiles:
    model_dir: Path
    input_processor: InputProcessor
    reasoning_parser: str | None   # "qwen3" or None
    tool_parser: type | None       # the model's own tool-call format; None: generic (corral.server.tool_calling)
    json_tool_parser: type         # the generic format's parser

    @classmethod
    def read(cls, model_dir: Path, spec: ModelSpec, plugin_manager=None) -> "ModelFiles":
        hf_config = read_hf_config(model_dir)
        pooler = pooler_config(model_dir, hf_config, spec.task, spec.pooling, spec.normalize)
        inputs = InputProcessor.from_model_dir(model_dir, served_max_model_len(spec, hf_config),
                                               hf_config.get("vocab_size"), spec.sampling, pooler)
        architectures = hf_config.get("architectures") or [hf_config.get("model_type") or ""]
        parser = spec.reasoning_parser
        if parser == "auto":
            parser = "qwen3" if any(a.lower().startswith("qwen3") for a in architectures) else "none"
        tool_parser, json_tool_parser = tool_parsers(spec, inputs, architectures, plugin_manager)
        return cls(model_dir, inputs, None if parser == "none" else parser, tool_parser, json_tool_parser)


def tool_parsers(spec: ModelSpec, inputs: InputProcessor, architectures: list[str], plugin_manager=None):
    """(the model's own tool-call parser or None, the generic one): its own only where its chat template
    shows the tools (a template that ignores them leaves the model no way to know them)."""
    from corral.registry.plugins import PluginManager
    registry = (plugin_manager or PluginManager()).tool_parsers()
    template = getattr(inputs.tokenizer, "chat_template", None)
    template = template if isinstance(template, str) or template is None else json.dumps(template)
    override = None if spec.tool_call_parser == "auto" else spec.tool_call_parser
    parser = registry.for_model(architectures, override, template)
    if parser is not None and not template_shows_tools(inputs.render_chat):
        log = logger.warning if override else logger.info
        log("%s: the chat template does not render tools; tool calls use the generic JSON prompt and parser "
            "instead of %s", spec.name, parser.__name__)
        parser = None
    return parser, registry.resolve("json")


def served_max_model_len(spec: ModelSpec, hf_config: dict) -> int:
    """The spec's max_model_len (one value serves every model by default) up to the model's own length:
    a longer one would index past its rotary tables."""
    limit = positions_of(hf_config)
    if spec.max_model_len and spec.max_model_len > limit:
        logger.warning("%s: max_model_len %d is past the %d positions the model was built for; serving %d",
                       spec.name or spec.model, spec.max_model_len, limit, limit)
    return min(spec.max_model_len or limit, limit)


def resolve_model_dir(spec: ModelSpec, plugin_manager=None, progress=None) -> Path:
    """A local directory as it is; any other reference through the source plugins (downloading)."""
    from corral.registry.sources import local_model_dir, resolve_model
    return local_model_dir(spec.model) or Path(resolve_model(spec.model, source=spec.source,
                                                             plugin_manager=plugin_manager, progress=progress))
