"""Reading a serve config file: TOML, or YAML by its suffix, with the sections `corral serve` knows; a
parser's error in one line."""
from pathlib import Path

from corral.config import ConfigError

SECTIONS = ("server", "defaults", "models")


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as e:
        raise ConfigError(f"cannot parse {path}: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; allowed: {', '.join(SECTIONS)}")
    return data


def _one_line(error: Exception) -> str:
    """A parser's error in one line: YAML's spans several (the problem, then the text under a caret)."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is not None and problem:
        return f"{problem} (at line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())
