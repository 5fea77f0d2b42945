"""Fetching one hub repository into the store: pick the files serving needs, download them through
the hub's own client (resuming `<file>.incomplete` partials), verify size and sha256 (or the git blob
id), fetch again what fails, and mark the directory complete only when every file passed.

A hub source plugin subclasses `HubSource` and provides `snapshot` (list the files at a revision)
and `download` (one file, resuming). Everything else, including the choice of files, is here.
"""
import glob
import hashlib
import logging
import os
import re
import shutil
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from corral.progress import DownloadCancelled, DownloadProgress, human_size
from corral.registry.errors import CorruptFileError, HubUnreachableError, ModelNotFoundError, SourceError
from corral.store import META_FILE, FileRecord, ModelStore, StoredModel

logger = logging.getLogger(__name__)

SERVING_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json",
    "modules.json", "config_sentence_transformers.json",  # how a sentence-transformers model pools
})
POOLING_CONFIG = re.compile(r"\d+_Pooling/config\.json")


@dataclass(slots=True, frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None = None
    git_oid: str | None = None  # git blob sha1, what the HF Hub gives for files not in LFS

    @property
    def remote_id(self) -> str | None:
        return self.sha256 or self.git_oid


@dataclass(slots=True)
class RemoteSnapshot:
    repo: str
    revision: str
    commit: str | None
    files: list[RemoteFile] = field(default_factory=list)


def select_files(files: list[RemoteFile]) -> list[RemoteFile]:
    """Config, tokenizer, chat template, generation config, and the weights: safetensors with their
    index, or `pytorch_model*.bin` only when the repository has no safetensors. Top level only, but for
    a sentence-transformers Pooling module's config (embedding models: how they pool)."""
    top = [f for f in files if "/" not in f.path]
    safetensors = [f for f in top if f.path.endswith(".safetensors") and not f.path.startswith("consolidated")]
    if safetensors:
        weights, index = safetensors, "model.safetensors.index.json"
    else:
        weights = [f for f in top if re.fullmatch(r"pytorch_model.*\.bin", f.path)]
        index = "pytorch_model.bin.index.json"
    extra = [f for f in top if f.path in SERVING_FILES or f.path == index or f.path.endswith(".tiktoken")]
    extra += [f for f in files if POOLING_CONFIG.fullmatch(f.path)]
    return sorted(extra + weights, key=lambda f: f.path)


def incomplete_path(target: Path) -> Path:
    return target.with_name(target.name + ".incomplete")


def _digests(path: Path) -> tuple[str, str]:
    """sha256 and git blob sha1 in one read."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def check_file(path: Path, remote: RemoteFile) -> tuple[FileRecord | None, str]:
    """A record of the file when it matches what the hub announced, else (None, what is wrong)."""
    st = path.stat()
    if remote.size is not None and st.st_size != remote.size:
        return None, f"{st.st_size} bytes instead of {remote.size}"
    sha256, git_oid = _digests(path)
    if remote.sha256 and sha256 != remote.sha256.lower():
        return None, f"sha256 {sha256[:12]}... instead of {remote.sha256[:12]}..."
    if remote.git_oid and not remote.sha256 and git_oid != remote.git_oid.lower():
        return None, f"git blob id {git_oid[:12]}... instead of {remote.git_oid[:12]}..."
    return FileRecord(size=st.st_size, sha256=sha256, mtime_ns=st.st_mtime_ns, remote_id=remote.remote_id), ""


def _holds_bytes(model_dir: Path) -> bool:
    """Whether any file besides the store's metadata has content (a partial download to resume)."""
    return any(p.is_file() and p.name != META_FILE and p.stat().st_size for p in model_dir.rglob("*"))


def check_free_space(model_dir: Path, todo: list[RemoteFile]) -> None:
    """Fail before downloading when the disk cannot take what is left (less what partial files of
    an interrupted run already hold), not hours later with a full disk."""
    partial = sum(p.stat().st_size for f in todo for p in model_dir.glob(glob.escape(f.path) + "*") if p.is_file())
    need = sum(f.size or 0 for f in todo) - partial
    free = shutil.disk_usage(model_dir).free
    if need > free:
        raise SourceError(f"{model_dir.name} needs {human_size(need)} more in {model_dir.parent}, which has "
                          f"{human_size(free)} free; free some space or set CORRAL_HOME to a larger disk")


class FileProgress:
    """Byte counts of one file, fed into the model's overall progress (and a per-file bar)."""

    def __init__(self, overall: DownloadProgress, name: str, size: int | None, abort: threading.Event | None = None):
        self.overall, self.name, self.size, self.abort = overall, name, size, abort
        self.reported = 0
        self.bar = None

    def open_bar(self, initial: int = 0):
        if self.bar is None:
            self.bar = self.overall.file_bar(self.name, self.size, initial)

    def update(self, n: int) -> None:
        if self.abort is not None and self.abort.is_set():
            raise DownloadCancelled(f"{self.name}: another file of the model failed")
        self.reported += n
        self.overall.advance(n)
        if self.bar is not None:
            self.bar.update(n)

    def rewind(self) -> None:
        self.overall.advance(-self.reported)
        self.reported = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class HubSource:
    """Base of the hub sources. Subclasses set `scheme`, `label`, `default_revision`,
    `unreachable_hint`, and implement `endpoint`, `snapshot` and `download`."""

    scheme = ""
    label = ""
    default_revision = "main"
    unreachable_hint = ""
    max_attempts = 3

    def __init__(self, store: ModelStore):
        self.store = store
        self._reachable: bool | None = None

    # -- what a hub plugin provides ---------------------------------------------------------------
    def endpoint(self) -> str:
        raise NotImplementedError

    def snapshot(self, repo: str, revision: str) -> RemoteSnapshot:
        """The files of `repo` at `revision`; raises the errors of corral.registry.errors."""
        raise NotImplementedError

    def download(self, snap: RemoteSnapshot, remote: RemoteFile, model_dir: Path, progress: FileProgress) -> None:
        """Put `remote` at `model_dir / remote.path`, resuming from its `.incomplete` partial."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    def probe(self, timeout: float | None = None, strict: bool = True) -> None:
        """Raise HubUnreachableError unless the endpoint answers HTTP within `timeout` seconds.

        `strict` (auto, deciding whether to fall back): a timeout or a 5xx on the endpoint's root is
        unreachable. Not strict (the source was chosen): only an endpoint that cannot be connected
        to at all (refused, unknown host, bad URL) fails here; a slow or erroring front page is left
        to the API calls themselves, which have their own timeouts and error mapping."""
        if self._reachable:
            return
        timeout = timeout or float(os.environ.get("CORRAL_PROBE_TIMEOUT", "3"))
        endpoint = self.endpoint()
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint + "/", method="HEAD"), timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            if e.code >= 500 and strict:
                raise self.unreachable(f"HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            if not strict and isinstance(reason, (TimeoutError, socket.timeout)):
                return  # slow, not down: let the API call decide
            raise self.unreachable(str(reason or type(e).__name__)) from None
        self._reachable = True

    def unreachable(self, reason: str) -> HubUnreachableError:
        return HubUnreachableError(f"cannot reach {self.label} at {self.endpoint()} ({reason}); "
                                   f"{self.unreachable_hint}", endpoint=self.endpoint())

    def fetch(self, ref, progress: DownloadProgress, update: bool = False) -> Path:
        """The store directory of `ref` (a ModelRef), downloading what is missing or corrupt.
        With `update`, the hub is asked for the revision's current files even when a copy exists."""
        model_dir = self.store.dir_for(self.scheme, ref.id, ref.revision)
        if not update and self.store.complete_copy(model_dir):
            return model_dir
        with self.store.lock(model_dir):
            current = self.store.read(model_dir)
            if current and current.complete and not update:
                bad = self.store.verify(current)
                if not bad:
                    return model_dir
                logger.warning("%s: %s failed verification; fetching again from %s", current.name,
                               ", ".join(bad), self.label)
            self.probe(strict=False)  # auto probed strictly before, where it could fall back
            snap = self.snapshot(ref.id, ref.revision or self.default_revision)
            files = select_files(snap.files)
            if not any(f.path == "config.json" for f in files):
                raise ModelNotFoundError(f"{ref.id} on {self.label} has no config.json at the top level: "
                                         "not a Hugging Face transformers model")
            manifest = ref.manifest.name if ref.manifest else (current.manifest if current else None)
            record = StoredModel(path=model_dir, source=self.scheme, repo=ref.id, revision=ref.revision,
                                 commit=snap.commit, endpoint=self.endpoint(), manifest=manifest)
            try:
                self._download_all(snap, files, record, current, progress)
            except BaseException:
                if current is None and not _holds_bytes(model_dir):  # a first attempt that fetched nothing
                    shutil.rmtree(model_dir, ignore_errors=True)  # leaves no empty `partial` entry
                raise
            for name in set(current.files if current else ()) - set(record.files):
                (model_dir / name).unlink(missing_ok=True)  # no longer part of the revision
            record.complete = True
            self.store.write(record)
            return model_dir

    def _download_all(self, snap, files, record: StoredModel, current: StoredModel | None, progress):
        old = current.files if current else {}
        todo, done = [], 0
        for f in files:
            rec = old.get(f.path)
            if rec and rec.remote_id == f.remote_id and self.store.file_ok(record.path / f.path, rec):
                record.files[f.path] = rec
                done += rec.size
            else:
                todo.append(f)
        self.store.write(record)
        check_free_space(record.path, todo)
        progress.begin(f"{self.label} ({self.endpoint()})", len(files), sum(f.size or 0 for f in files),
                       done_bytes=done, files_done=len(files) - len(todo))
        lock, abort = threading.Lock(), threading.Event()

        def one(f: RemoteFile):
            rec = self._fetch_file(snap, f, record.path, progress, abort)
            with lock:
                record.files[f.path] = rec
                self.store.write(record)
            progress.file_done()

        workers = max(1, min(int(os.environ.get("CORRAL_DOWNLOAD_WORKERS", "4")), len(todo)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corral-download")
        futures = [pool.submit(one, f) for f in todo]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in finished:
                fut.result()
        except BaseException:
            abort.set()  # the other threads stop at their next chunk
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_file(self, snap: RemoteSnapshot, remote: RemoteFile, model_dir: Path, progress,
                    abort: threading.Event | None = None) -> FileRecord:
        target = model_dir / remote.path
        if target.exists():  # finished by an earlier, interrupted run
            rec, _ = check_file(target, remote)
            if rec:
                progress.advance(rec.size)
                return rec
            target.unlink()
        reason = ""
        for attempt in range(1, self.max_attempts + 1):
            fp = FileProgress(progress, remote.path, remote.size, abort)
            try:
                self.download(snap, remote, model_dir, fp)
                rec, reason = check_file(target, remote)
            except CorruptFileError as e:
                rec, reason = None, str(e)
            finally:
                fp.close()
            if rec:
                return rec
            logger.warning("%s: %s is corrupt (%s); fetching it again (%d/%d)", snap.repo, remote.path, reason,
                           attempt, self.max_attempts)
            target.unlink(missing_ok=True)
            incomplete_path(target).unlink(missing_ok=True)
            fp.rewind()
        raise CorruptFileError(f"{remote.path} of {snap.repo} from {self.label} failed verification "
                               f"{self.max_attempts} times ({reason}); it is not served")
