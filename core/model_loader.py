import json
import logging
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import nn

from corral.layers.linear import shape_of

logger = logging.getLogger(__name__)

SKIPPED = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


class WeightLoadError(RuntimeError):
    pass


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those its index names, or every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise WeightLoadError(f"{index} is not a valid safetensors index: {e}") from e
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightLoadError(f"{model_dir} is missing weight files named by its index: {', '.join(missing)}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"no *.safetensors weights in {model_dir}")
    return files


def load_weights(model: nn.Module, model_dir: str | Path):
    """Copy every checkpoint tensor into its parameter, following the model's
    packed_modules_mapping (q/k/v -> qkv_proj shards); fail if any parameter stays unloaded. Each
    parameter's weight_loader reads its part of the tensor (a tensor-parallel rank reads only its
    shard from the file)."""
    model_dir = Path(model_dir)
    packed = getattr(model, "packed_modules_mapping", {})
    params = dict(model.named_parameters(remove_duplicate=True))
    loaded: dict[str, set] = {}
    for path in checkpoint_files(model_dir):
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name.endswith(SKIPPED):
                        continue
                    _load_one(params, packed, name, f.get_slice(name), loaded)
        except SafetensorError as e:
            raise WeightLoadError(f"cannot read {path}: {e} (the file is truncated or corrupt; "
                                  "delete it and download again)") from e
    missing = sorted(n for n, p in params.items()
                     if not set(getattr(p, "shard_ids", [None])) <= loaded.get(n, set()))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise WeightLoadError(f"{model_dir} lacks {len(missing)} weights the model needs: {shown}")


def _load_one(params, packed, name, source, loaded):
    shard_id, checkpoint_name = None, name
    for part, (target, shard) in packed.items():
        if f".{part}." in name:
            name, shard_id = name.replace(f".{part}.", f".{target}."), shard
            break
    param = params.get(name)
    if param is None and f"model.{name}" in params:  # a bare decoder's checkpoint (Qwen3-Embedding's)
        name = f"model.{name}"
        param = params[name]
    if param is None:
        if name == "lm_head.weight" and "lm_head.weight" not in params:
            return  # tied to the embedding
        raise WeightLoadError(f"checkpoint tensor {checkpoint_name} has no place in the model; "
                              "is config.architectures right for these weights?")
    loader = getattr(param, "weight_loader", None)
    try:
        if loader is None:
            if tuple(param.shape) != shape_of(source):
                raise ValueError(f"expected shape {tuple(param.shape)}, got {shape_of(source)}")
            param.data.copy_(source[:])
        else:
            loader(param, source, shard_id)
    except ValueError as e:
        raise WeightLoadError(f"weight {name}: {e}") from e
    loaded.setdefault(name, set()).add(shard_id)
