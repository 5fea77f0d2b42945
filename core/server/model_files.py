"""What the API process reads from a model's directory: tokenizer, EOS ids, context length, sampling
defaults and reasoning parser. The weights stay with the engine process."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from corral.model_config import positions_of
from corral.engine.tokenizer import eos_token_ids, load_tokenizer
from corral.sampling_params import SamplingParams
from corral.server.config import ModelSpec

logger = logging.getLogger(__name__)
GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(slots=True)
class ModelFiles:
    model_dir: Path
    tokenizer: object
    eos_token_ids: frozenset[int]
    vocab_size: int | None
    max_model_len: int
    defaults: dict                 # generation_config.json's sampling values, then the config file's
    reasoning_parser: str | None   # "qwen3" or None

    @classmethod
    def read(cls, model_dir: Path, spec: ModelSpec) -> "ModelFiles":
        hf_config = json.loads((model_dir / "config.json").read_text())
        tokenizer = load_tokenizer(model_dir)
        defaults = {}
        path = model_dir / "generation_config.json"
        if path.is_file():
            values = json.loads(path.read_text())
            defaults = {k: values[k] for k in GENERATION_DEFAULTS if values.get(k) is not None}
        defaults.update(spec.sampling)
        SamplingParams(**{k: v for k, v in defaults.items() if k != "max_tokens"})  # fails early if bad
        parser = spec.reasoning_parser
        if parser == "auto":
            architectures = hf_config.get("architectures") or [hf_config.get("model_type") or ""]
            parser = "qwen3" if any(a.lower().startswith("qwen3") for a in architectures) else "none"
        return cls(model_dir, tokenizer, eos_token_ids(model_dir, tokenizer), hf_config.get("vocab_size"),
                   served_max_model_len(spec, hf_config), defaults, None if parser == "none" else parser)


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
