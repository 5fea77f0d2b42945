import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from corral.model_config import positions_of
from corral.pooling_params import POOLING_TYPES, TASKS, resolve_task

KV_CACHE_DTYPES = ("auto", "fp8")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16,
          "float": torch.float32}


class ConfigError(ValueError):
    pass


def read_hf_config(model_dir: str | Path) -> dict:
    """A model directory's config.json, refused in one line when it is missing or not a JSON object."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a model directory (no config.json)")
    try:
        hf_config = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{model_dir}: config.json is not valid JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise ConfigError(f"{model_dir}: config.json is not a JSON object")
    return hf_config


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


def setting(default, help: str | None = None, flag: str | None = None, metavar: str | None = None,
            choices: tuple | None = None):
    """A setting's default and, for those `corral serve` offers as flags, the help text (and the flag's
    name where it is not the field's, its metavar, its choices)."""
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": choices} if help else {}
    return field(default=default, metadata=metadata)


@dataclass(slots=True, kw_only=True)
class EngineArgs:
    """Every engine setting, declared once: the offline LLM's keyword arguments, `corral serve`'s
    flags and the config file's per-model keys are all derived from these fields."""

    dtype: str = setting("auto", "auto, bfloat16, float16 or float32")
    device: str | None = setting(None, "cpu or cuda (default: cuda when available)")
    tensor_parallel_size: int = setting(1, "GPUs per model: one engine over N ranks, each holding 1/N of the "
                                           "heads, MLP and vocabulary (env TENSOR_PARALLEL_SIZE)")
    max_model_len: int | None = setting(None, "context length per model (default: the model's own; env MAX_MODEL_LEN)")
    max_num_seqs: int = setting(256, "sequences per batch per model")
    max_num_batched_tokens: int = setting(8192, "tokens per engine step per model")
    block_size: int = setting(16)
    gpu_memory_utilization: float = setting(0.9, "fraction of GPU memory for all models, split evenly "
                                                 "(env GPU_MEMORY_UTILIZATION)")
    num_kv_blocks: int | None = setting(None)
    kv_cache_dtype: str = setting("auto", "auto: keys and values in the model's dtype; fp8: in float8 e4m3, half "
                                          "of bf16's bytes, so twice the tokens (scale 1.0, as vLLM's fp8 "
                                          "without calibrated scales; CUDA needs compute capability 8.9+)",
                                  choices=KV_CACHE_DTYPES)
    kv_cache_memory_bytes: int | None = setting(None, "KV cache size per model, e.g. 512MiB (default: from the "
                                                      "GPU share; 1 GiB on CPU)", flag="--kv-cache-memory")
    enable_prefix_caching: bool = setting(True)
    attention_backend: str | None = setting(None)
    enforce_eager: bool = setting(False, "no CUDA graphs (they are captured for decode batches by default)")
    num_scheduler_steps: int = setting(1, "decode steps per launch (default 1; each step is launched while the one "
                                          "before runs, so a new request joins at the next step)")
    async_scheduling: bool = setting(True)  # launch the next decode step (or group) before this one's tokens are back
    seed: int = setting(0)
    step_log: str | None = setting(None, "corral serve: a file each engine appends a JSON line to per step (the "
                                         "model, idle and step seconds, tokens, running and waiting), to find "
                                         "where a server's time goes", metavar="FILE")
    load_format: str = setting("auto", "dummy: random weights (config.json and a tokenizer suffice), "
                                       "for benchmarks", choices=("auto", "dummy"))
    task: str = setting("auto", "generate, or embed: serve the model's pooled hidden states (/v1/embeddings); "
                                "auto (default): embed for a sentence-transformers folder (modules.json)",
                        choices=TASKS)
    pooling: str | None = setting(None, "with task embed: last, mean or cls (default: as the model's "
                                        "sentence-transformers modules say, else last)", choices=POOLING_TYPES)
    normalize: bool | None = setting(None)  # with task embed: L2-normalise (default: as the model says, else true)

    def check(self):
        """The checks that need no model files; raises ConfigError."""
        checks = [
            (self.max_model_len is None or self.max_model_len >= 1,
             f"max_model_len must be >= 1, got {self.max_model_len}"),
            (self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}"),
            (self.tensor_parallel_size >= 1, f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}"),
            (self.max_num_batched_tokens >= 1,
             f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"),
            (self.num_scheduler_steps >= 1, f"num_scheduler_steps must be >= 1, got {self.num_scheduler_steps}"),
            (self.block_size >= 1 and self.block_size & (self.block_size - 1) == 0,
             f"block_size must be a power of two, got {self.block_size}"),
            (self.step_log is None or Path(self.step_log).parent.is_dir(),
             f"step_log {self.step_log}: its folder does not exist"),
            (self.kv_cache_dtype in KV_CACHE_DTYPES,
             f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}"),
            (self.load_format in ("auto", "dummy"), f"load_format must be auto or dummy, got {self.load_format!r}"),
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.pooling is None or self.pooling in POOLING_TYPES,
             f"pooling must be one of {', '.join(POOLING_TYPES)}, got {self.pooling!r}"),
            (self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
             f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


ENGINE_ARGS = tuple(f.name for f in fields(EngineArgs))


@dataclass(slots=True)
class EngineConfig(EngineArgs):
    """Everything one engine needs. `model` is a local directory of HF files."""

    model: str
    hf_config: dict = field(default_factory=dict)
    # elastic KV: back only this many of the reserved blocks at start (the server's SetKVGrant changes it);
    # None: not elastic, every block backed, each layer's cache one allocation. The server decides it.
    kv_grant_blocks: int | None = setting(None)

    def __post_init__(self):
        path = Path(self.model)
        self.hf_config = read_hf_config(path)
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if problem := device_problem(self.device):
            raise ConfigError(problem)
        self.torch_dtype  # validates
        self.check()
        if self.kv_grant_blocks is not None and self.kv_grant_blocks < 1:
            raise ConfigError(f"kv_grant_blocks must be >= 1, got {self.kv_grant_blocks}")
        self.task = resolve_task(self.task, path)
        if self.task == "embed" and self.tensor_parallel_size > 1:
            raise ConfigError("task embed runs on one device: tensor_parallel_size must be 1, "
                              f"got {self.tensor_parallel_size}")
        if problem := self.tensor_parallel_problem():
            raise ConfigError(problem)
        limit = positions_of(self.hf_config)
        if self.max_model_len is None:
            self.max_model_len = limit
        if self.max_model_len > limit:
            raise ConfigError(f"max_model_len {self.max_model_len} is past the {limit} positions this model was "
                              f"built for (max_position_embeddings); use at most {limit}")

    def tensor_parallel_problem(self) -> str | None:
        """Why this model cannot be split over tensor_parallel_size ranks on this device, or None."""
        from corral.distributed.group import tensor_parallel_problem
        size, hf = self.tensor_parallel_size, self.hf_config
        if size == 1:
            return None
        d = torch.device(self.device)
        if d.type == "cuda" and (d.index or 0) + size > torch.cuda.device_count():
            return (f"tensor_parallel_size {size} needs {size} CUDA devices from {d}; "
                    f"{torch.cuda.device_count()} are visible")
        heads = hf.get("num_attention_heads")
        if heads is None or "intermediate_size" not in hf:
            return None  # ModelConfig names what config.json lacks
        return tensor_parallel_problem(heads, hf.get("num_key_value_heads") or heads, hf["intermediate_size"], size)

    def kv_cache_dtype_problem(self) -> str | None:
        """Why this device cannot hold the KV cache's element type, or None. Asked by the engine, on its own
        GPU: it starts CUDA, which the API process (that builds EngineConfigs too) never does."""
        d = torch.device(self.device)
        if self.kv_cache_dtype != "fp8" or d.type != "cuda":
            return None
        capability = torch.cuda.get_device_capability(d)
        if capability < (8, 9):
            return (f"kv_cache_dtype fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                    f"{torch.cuda.get_device_name(d)} is {capability[0]}.{capability[1]}")
        return None

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's element type."""
        return torch.float8_e4m3fn if self.kv_cache_dtype == "fp8" else self.torch_dtype

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
