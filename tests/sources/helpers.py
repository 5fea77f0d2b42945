"""Shared by the sources tests: the repositories the fake hubs serve, and a file comparison."""
from pathlib import Path

TINY = "corral-test/tiny-llama"
GATED = "corral-test/gated-llama"
BIN_ONLY = "corral-test/bin-only"
TOKEN = "hf_granted_token"


def same_files(a: Path, b: Path, names) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
