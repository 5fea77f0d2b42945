"""Embedding models: what a pooling request asks for (PoolingParams) and how a model pools its hidden
states (PoolerConfig), read once from its files by the API process and by the engine alike. Torch-free.

A sentence-transformers folder says how it pools: `modules.json` lists a Pooling module (its
`config.json`, e.g. `1_Pooling/config.json`, names the mode) and a Normalize module when vectors are
L2-normalised. Without one, a decoder pools its last token and normalises (Qwen3-Embedding's way,
and vLLM's default for a causal LM served for embeddings)."""
import json
from dataclasses import dataclass
from pathlib import Path

TASKS = ("auto", "generate", "embed")
POOLING_TYPES = ("last", "mean", "cls")
# sentence-transformers' Pooling modes, in the order it reads them
SENTENCE_TRANSFORMERS_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                               "pooling_mode_lasttoken": "last"}
UNSUPPORTED_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens")


class PoolingError(ValueError):
    """A model folder whose pooling corral cannot run, or a setting outside the allowed values."""


class PoolingParamsError(ValueError):
    """A pooling request the model cannot serve; `param` names the request field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class TaskError(ValueError):
    """A request for what a model is not served for: text from an embedding model, or vectors from a
    generation model."""


@dataclass(slots=True)
class PoolingParams:
    """One embedding request's options. `dimensions`: keep the first `dimensions` values of the
    pooled vector (Matryoshka truncation), normalised again when the model normalises."""

    dimensions: int | None = None


@dataclass(slots=True, frozen=True)
class PoolerConfig:
    """How a model served for embeddings turns a prompt's hidden states into one vector."""

    pooling_type: str        # last, mean or cls
    normalize: bool          # L2-normalise the pooled vector
    hidden_size: int
    matryoshka: bool         # trained so that a vector's first values are an embedding themselves
    matryoshka_dimensions: tuple[int, ...] | None = None  # the only sizes allowed, when the model lists them

    @property
    def prefix_cacheable(self) -> bool:
        """Whether a prompt's cached prefix may be skipped: last-token pooling reads only the final
        token's state, which is always computed; mean and cls pooling need the states of the prefix."""
        return self.pooling_type == "last"

    def check(self, params: PoolingParams, model: str):
        d = params.dimensions
        if d is None:
            return
        if not self.matryoshka:
            raise PoolingParamsError(f"model {model} does not support Matryoshka truncation: its embeddings have "
                                     f"{self.hidden_size} dimensions, and fewer would not be an embedding; "
                                     "leave dimensions out", "dimensions")
        if not 1 <= d <= self.hidden_size:
            raise PoolingParamsError(f"dimensions must be in [1, {self.hidden_size}] for model {model} (its hidden "
                                     f"size), got {d}", "dimensions")
        if self.matryoshka_dimensions and d not in self.matryoshka_dimensions:
            allowed = ", ".join(map(str, self.matryoshka_dimensions))
            raise PoolingParamsError(f"model {model} allows dimensions {allowed}; got {d}", "dimensions")


def check_task(pooler: PoolerConfig | None, asked: str, model: str):
    """TaskError unless the model (pooler: how it pools when served for embeddings, None when it
    generates) serves `asked`, generate or embed."""
    if pooler is not None and asked != "embed":
        raise TaskError(f"model {model} is served for embeddings (task embed); it does not generate text. "
                        "Ask /v1/embeddings (or LLM.embed) for its vectors")
    if pooler is None and asked == "embed":
        raise TaskError(f"model {model} is served for text generation; it does not serve embeddings. Serve it "
                        'with task = "embed" (--task embed), choosing its pooling, to get its vectors')


def resolve_task(task: str, model_dir: str | Path) -> str:
    """auto: embed for a sentence-transformers folder (it has modules.json), else generate."""
    if task not in TASKS:
        raise PoolingError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if task != "auto":
        return task
    return "embed" if (Path(model_dir) / "modules.json").is_file() else "generate"


def pooler_config(model_dir: str | Path, hf_config: dict, task: str, pooling: str | None = None,
                  normalize: bool | None = None) -> PoolerConfig | None:
    """How the model at `model_dir` pools when served for embeddings (None when it generates): the
    explicit `pooling` / `normalize` settings, else its sentence-transformers modules, else last-token
    pooling, normalised."""
    if resolve_task(task, model_dir) != "embed":
        return None
    if pooling is not None and pooling not in POOLING_TYPES:
        raise PoolingError(f"pooling must be one of {', '.join(POOLING_TYPES)}; got {pooling!r}")
    found_type, found_normalize = sentence_transformers_pooling(Path(model_dir))
    dims = hf_config.get("matryoshka_dimensions")
    pooling_type = pooling or found_type or "last"
    # the Qwen3-Embedding family (a Qwen3 decoder pooled by its last token) is trained for truncation
    qwen3_embedding = (found_type == pooling_type == "last"
                       and "Qwen3ForCausalLM" in (hf_config.get("architectures") or []))
    return PoolerConfig(pooling_type=pooling_type,
                        normalize=normalize if normalize is not None else
                        (found_normalize if found_normalize is not None else True),
                        hidden_size=hf_config["hidden_size"],
                        matryoshka=bool(hf_config.get("is_matryoshka") or dims or qwen3_embedding),
                        matryoshka_dimensions=tuple(dims) if dims else None)


def sentence_transformers_pooling(model_dir: Path) -> tuple[str | None, bool | None]:
    """(pooling type, normalize) as a sentence-transformers folder's modules say; None for what they
    do not say."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None, None
    try:
        modules = json.loads(modules_file.read_text())
        types = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PoolingError(f"modules.json of {model_dir.name} cannot be read: {e}") from None
    normalize = "Normalize" in types
    if "Pooling" not in types:
        return None, normalize
    config_file = model_dir / types["Pooling"] / "config.json"
    if not config_file.is_file():
        return None, normalize
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise PoolingError(f"{types['Pooling']}/config.json of {model_dir.name} cannot be read: {e}") from None
    modes = [mode for key, mode in SENTENCE_TRANSFORMERS_MODES.items() if config.get(key)]
    unsupported = [key for key in UNSUPPORTED_MODES if config.get(key)]
    if unsupported or len(modes) > 1:
        raise PoolingError(f"{model_dir.name} pools by {', '.join(unsupported + modes)}; corral pools by one of "
                           f"{', '.join(POOLING_TYPES)} (set pooling to choose)")
    return (modes[0] if modes else None), normalize
