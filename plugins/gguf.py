"""GGUF files (llama.cpp's and Ollama's format) turned into ordinary HF directories in the store:
dequantized by transformers (with the `gguf` package), tokenizer and chat template included."""
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from corral.registry.errors import ModelNotFoundError, SourceError
from corral.registry.hookspecs import hookimpl
from corral.store import ModelStore, StoredModel

logger = logging.getLogger(__name__)


class GGUFConversionError(SourceError):
    pass


def dequantized_dtype(gguf_path: Path) -> str:
    """The precision a GGUF's weights come back in: float32 or float16 where its tensors are stored so,
    bfloat16 where they are bf16 or quantized (the quantized types scale fp16 blocks; bf16 keeps
    their range at half the size of float32)."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader
    types = {t.tensor_type for t in GGUFReader(gguf_path).tensors}
    if types - {T.F32, T.F16, T.BF16} or T.BF16 in types:
        return "bfloat16"
    return "float16" if T.F16 in types else "float32"


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None) -> Path:
    """Dequantize `gguf_path` with transformers into `out_dir` (config, safetensors, tokenizer,
    chat template), in `dtype` (default: `dequantized_dtype`). Written to a temporary sibling and
    renamed, so a crash leaves nothing half-made."""
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise GGUFConversionError(f"GGUF support needs transformers, gguf and accelerate: "
                                  f"pip install gguf accelerate ({e})") from e
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise GGUFConversionError(f"GGUF file not found: {gguf_path}")
    logger.info("converting %s into %s", gguf_path, out_dir)
    try:
        dtype = dtype or dequantized_dtype(gguf_path)
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
    try:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def convert_into_store(store: ModelStore, gguf_path: Path, *, source: str, repo: str, revision: str | None,
                       progress, manifest: str | None = None) -> Path:
    """The store directory converted from `gguf_path`, converting only when it is missing or fails
    verification."""
    model_dir = store.dir_for(source, repo, revision)
    if store.complete_copy(model_dir):
        progress.set_state("ready")
        return model_dir
    with store.lock(model_dir):
        current = store.read(model_dir)
        if current and current.complete:
            bad = store.verify(current)
            if not bad:
                progress.set_state("ready")
                return model_dir
            logger.warning("%s: %s failed verification; converting %s again", current.name, ", ".join(bad),
                           gguf_path)
        shutil.rmtree(model_dir, ignore_errors=True)
        progress.set_state("converting")
        convert_gguf(gguf_path, model_dir)
        record = StoredModel(path=model_dir, source=source, repo=repo, revision=revision, manifest=manifest,
                             origin=str(gguf_path), complete=True)
        record.files = {p.name: store.record(p) for p in sorted(model_dir.iterdir()) if p.is_file()}
        store.write(record)
    return model_dir


class GGUFSource:
    scheme = "gguf"
    label = "a GGUF file"

    def __init__(self, store: ModelStore):
        self.store = store

    def fetch(self, ref, progress, update: bool = False) -> Path:
        path = Path(ref.id).expanduser().resolve()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        st = path.stat()
        key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
        return convert_into_store(self.store, path, source="gguf", repo=path.stem, revision=key, progress=progress,
                                  manifest=ref.manifest.name if ref.manifest else None)


@hookimpl
def register_sources(register):
    register("gguf", GGUFSource)
