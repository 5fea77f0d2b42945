"""Random checkpoints of the benchmark configs in a local store, written at disk speed: parameter names and
shapes from transformers' model on the meta device, values cut from one seeded pool of normal bf16 numbers
(std 0.02), safetensors shards of about 2 GB and the index written last (a checkpoint without it is
written again)."""
import json
import math
from pathlib import Path

from benchmarks.common import model_dir

SHARD_BYTES = 2 * 10**9
POOL_ELEMENTS = 64 * 2**20
INDEX = "model.safetensors.index.json"


def write_checkpoint(name: str, out: Path, dtype: str = "bfloat16") -> Path:
    """A benchmark config's name, or a directory with config.json, as a checkpoint in `out` (kept if whole)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    out = Path(out)
    if (out / INDEX).is_file():
        return out
    source = Path(name) if Path(name).is_dir() else Path(model_dir(name, dtype))
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):  # of a write cut short, or another layout
        stale.unlink()
    config = json.loads((source / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, torch_dtype=dtype), indent=2))
    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch_dtype)
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]  # a tied lm_head once, as HF saves it
    generator = torch.Generator().manual_seed(0)
    pool = torch.empty(POOL_ELEMENTS, dtype=torch.float32).normal_(0, 0.02, generator=generator).to(torch_dtype)
    pool = torch.cat([pool, pool])

    def tensor(shape: tuple, offset: int):
        n = math.prod(shape)
        if n <= POOL_ELEMENTS:
            return pool[offset % POOL_ELEMENTS:][:n].clone().view(shape)
        return pool[:POOL_ELEMENTS].repeat(-(-n // POOL_ELEMENTS))[:n].view(shape)

    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    shards, size = [[]], 0
    for param, shape in shapes:
        if size >= SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((param, shape))
        size += itemsize * math.prod(shape)
    weight_map, offset = {}, 0
    for k, shard in enumerate(shards):  # one shard in memory at a time
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for param, shape in shard:
            tensors[param] = tensor(shape, offset)
            offset += 7919
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    (out / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out

