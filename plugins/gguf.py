"""GGUF files (llama.cpp's and Ollama's format) turned into ordinary HF directories."""
import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


class GGUFConversionError(RuntimeError):
    pass


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Dequantize `gguf_path` with transformers into `out_dir` (config, safetensors, tokenizer,
    chat template). Written to a temporary sibling and renamed, so a crash leaves nothing half-made."""
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise GGUFConversionError(f"GGUF support needs transformers, gguf and accelerate: "
                                  f"pip install 'corral[gguf]' ({e})") from e
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise GGUFConversionError(f"GGUF file not found: {gguf_path}")
    logger.info("converting %s into %s", gguf_path, out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=getattr(torch, dtype))
    except Exception as e:
        raise GGUFConversionError(f"cannot read GGUF file {gguf_path}: {e}") from e
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config.pop("_name_or_path", None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir
