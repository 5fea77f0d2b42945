import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from corral.model_config import positions_of

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16,
          "float": torch.float32}


class ConfigError(ValueError):
    pass


def device_problem(device: str) -> str | None:
    """Why `device` cannot hold a model on this machine, or None."""
    try:
        d = torch.device(device)
    except RuntimeError:
        return f"device {device!r} is not a torch device (cpu, cuda, cuda:N, mps)"
    if d.type == "cuda" and not torch.cuda.is_available():
        return f"device {device}: no CUDA device is available to this torch {torch.__version__} (use cpu)"
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        return f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


@dataclass(slots=True)
class EngineConfig:
    """Everything one engine needs. `model` is a local directory of HF files."""

    model: str
    dtype: str = "auto"
    device: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    enable_prefix_caching: bool = True
    attention_backend: str | None = None
    enforce_eager: bool = False
    num_scheduler_steps: int = 8  # decode steps per host sync when the batch allows it
    async_scheduling: bool = True  # launch the next multi-step group before this one's tokens are back
    seed: int = 0
    load_format: str = "auto"  # "dummy": random weights, for benchmarks
    hf_config: dict = field(default_factory=dict)

    def __post_init__(self):
        path = Path(self.model)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{self.model} is not a model directory (no config.json)")
        self.hf_config = json.loads((path / "config.json").read_text())
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if problem := device_problem(self.device):
            raise ConfigError(problem)
        self.torch_dtype  # validates
        limit = positions_of(self.hf_config)
        if self.max_model_len is None:
            self.max_model_len = limit
        checks = [
            (self.max_model_len >= 1, f"max_model_len must be >= 1, got {self.max_model_len}"),
            (self.max_model_len <= limit, f"max_model_len {self.max_model_len} is past the {limit} positions this "
                                          f"model was built for (max_position_embeddings); use at most {limit}"),
            (self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}"),
            (self.max_num_batched_tokens >= 1,
             f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"),
            (self.num_scheduler_steps >= 1, f"num_scheduler_steps must be >= 1, got {self.num_scheduler_steps}"),
            (self.block_size >= 1 and self.block_size & (self.block_size - 1) == 0,
             f"block_size must be a power of two, got {self.block_size}"),
            (self.load_format in ("auto", "dummy"), f"load_format must be auto or dummy, got {self.load_format!r}"),
            (0 < self.gpu_memory_utilization <= 1,
             f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def torch_dtype(self) -> torch.dtype:
        name = self.dtype
        if name == "auto":
            name = self.hf_config.get("torch_dtype") or self.hf_config.get("dtype") or "float32"
            if name == "float32" and torch.device(self.device or "cpu").type == "cuda":
                name = "bfloat16"
        if name not in DTYPES:
            raise ConfigError(f"dtype must be one of auto, {', '.join(sorted(DTYPES))}; got {name!r}")
        return DTYPES[name]

    @property
    def architectures(self) -> list[str]:
        """config.architectures, else the causal-LM class named after model_type (llama -> LlamaForCausalLM)."""
        names = self.hf_config.get("architectures") or []
        model_type = self.hf_config.get("model_type")
        if not names and model_type:
            names = [model_type.replace("_", " ").title().replace(" ", "") + "ForCausalLM"]
        return names
