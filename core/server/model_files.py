"""What the API process reads from a model's directory: its input processor (tokenizer, EOS ids,
context length, sampling defaults) and reasoning parser. The weights stay with the engine process."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from corral.engine.input_processor import InputProcessor
from corral.model_config import positions_of
from corral.server.config import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelFiles:
    model_dir: Path
    input_processor: InputProcessor
    reasoning_parser: str | None   # "qwen3" or None

    @classmethod
    def read(cls, model_dir: Path, spec: ModelSpec) -> "ModelFiles":
        hf_config = json.loads((model_dir / "config.json").read_text())
        inputs = InputProcessor.from_model_dir(model_dir, served_max_model_len(spec, hf_config),
                                               hf_config.get("vocab_size"), spec.sampling)
        parser = spec.reasoning_parser
        if parser == "auto":
            architectures = hf_config.get("architectures") or [hf_config.get("model_type") or ""]
            parser = "qwen3" if any(a.lower().startswith("qwen3") for a in architectures) else "none"
        return cls(model_dir, inputs, None if parser == "none" else parser)


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
