"""Model references and the sources that turn them into local HF directories.

A reference is one of
    qwen3-4b                     a manifest name (corral.registry.manifests)
    hf:Org/Name[@revision]       the Hugging Face Hub, or the mirror HF_ENDPOINT names
    ms:Org/Name[@revision]       ModelScope
    Org/Name[@revision]          a hub id; --source (or CORRAL_SOURCE) picks the hub
    ./dir, /abs/file.gguf, ~/m   a local directory of HF files, or a GGUF file
    pypi:package                 a GGUF shipped inside an installed Python package

`source` is auto (default), hf or modelscope. auto serves a complete copy from the store when there
is one, else a local path or an installed package the manifest names, else the Hugging Face Hub
when its endpoint answers a quick probe, else ModelScope; a hub that is down, answers something that
is not its API, is gated without a token or lacks the repository also falls through to the next.
One model's files always come from one source.

Sources are plugins (hook `register_sources`): a class built with the ModelStore whose
`fetch(ref, progress, update=False) -> Path` returns the directory. An update of a complete hub copy
is fetched into the store's staging area and replaces the copy only once complete, so the copy
serves (offline too) until then, and stays as it was when the update fails.
"""
import contextlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from corral.download import HubSource
from corral.progress import DownloadProgress
from corral.registry.errors import (GatedRepoError, HubUnreachableError, ModelNotFoundError, SourceError,
                                    UnknownModelError)
from corral.registry.manifests import Manifest, ManifestRegistry
from corral.store import ModelStore, StoredModel

logger = logging.getLogger(__name__)

SCHEMES = {"hf": "hf", "huggingface": "hf", "ms": "ms", "modelscope": "ms", "local": "local", "file": "local",
           "gguf": "gguf", "pypi": "pypi"}
SOURCE_CHOICES = ("auto", "hf", "huggingface", "ms", "modelscope", "pypi", "local")


@dataclass(slots=True, frozen=True)
class ModelRef:
    scheme: str  # hf, ms, local, gguf, pypi; "" for a hub id whose hub the source option picks
    id: str  # repository id, path or package name
    revision: str | None = None
    manifest: Manifest | None = None
    text: str = ""

    def __str__(self) -> str:
        if self.scheme in ("local", "gguf"):
            return self.id
        return (f"{self.scheme}:" if self.scheme else "") + self.id + (f"@{self.revision}" if self.revision else "")


def _split_revision(text: str) -> tuple[str, str | None]:
    repo, sep, revision = text.partition("@")
    return repo, (revision or None) if sep else None


def _is_repo_id(repo: str) -> bool:
    """Name or Org/Name, each part of letters, digits, '-', '_' and '.' but not '.' or '..' alone."""
    parts = repo.split("/")
    return len(parts) <= 2 and all(re.fullmatch(r"[\w.-]+", p) and p not in (".", "..") for p in parts)


def _is_gguf(text: str) -> bool:
    """A `.gguf` name, or a file that starts with the GGUF magic (Ollama's blobs have no suffix)."""
    if text.lower().endswith(".gguf"):
        return True
    try:
        with open(Path(text).expanduser(), "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _local_ref(text: str, manifest: Manifest | None = None) -> ModelRef:
    return ModelRef("gguf" if _is_gguf(text) else "local", text, manifest=manifest, text=text)


def local_model_dir(text: str, manifests: ManifestRegistry | None = None) -> Path | None:
    """The directory `text` names on this machine, to serve as it is (no store, no plugin); None
    when it names none, or names a manifest (a folder of that name in the working directory does
    not shadow it: ./NAME does)."""
    try:
        ref = parse_ref(text, manifests)
    except UnknownModelError:
        return None
    path = Path(ref.id).expanduser()
    return path if ref.scheme == "local" and path.is_dir() else None


def parse_ref(text: str, manifests: ManifestRegistry | None = None) -> ModelRef:
    """Classify a reference; raises UnknownModelError (with suggestions) for an unknown name."""
    text = text.strip()
    if not text:
        raise UnknownModelError("empty model reference")
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in SCHEMES and rest:
        scheme = SCHEMES[scheme.lower()]
        if scheme in ("local", "gguf"):
            return _local_ref(rest)
        repo, revision = _split_revision(rest) if scheme != "pypi" else (rest, None)
        if scheme in ("hf", "ms") and not _is_repo_id(repo):
            raise UnknownModelError(f"{text!r}: {repo!r} is not a repository id (Org/Name)")
        return ModelRef(scheme, repo, revision, text=text)
    if text.startswith(("/", "./", "../", "~", ".\\")) or text.lower().endswith(".gguf"):
        return _local_ref(text)
    manifests = manifests if manifests is not None else ManifestRegistry.load()
    manifest = manifests.find(text)
    if manifest is not None:  # before a folder of the same name in the working directory (./NAME for that)
        return ModelRef("", manifest.name, manifest=manifest, text=text)
    if Path(text).exists():
        return _local_ref(text)
    repo, revision = _split_revision(text)
    if sep and "/" not in scheme and "/" in rest:  # zz:Org/Name; qwen3:5b is a name, for suggestions below
        raise UnknownModelError(f"{text!r}: unknown source prefix {scheme + ':'!r}; use hf:, ms:, pypi:, local:, "
                                "gguf: or none")
    if repo.count("/") == 1 and _is_repo_id(repo):
        return ModelRef("", repo, revision, text=text)
    manifests.get(text)  # raises with suggestions
    raise AssertionError("unreachable")


def find_manifest(ref: str, store: ModelStore | None = None) -> Manifest | None:
    """The manifest that `ref` names, for its serving defaults (max_model_len), or None."""
    try:
        return parse_ref(ref, ManifestRegistry.load((store or ModelStore()).root)).manifest
    except SourceError:
        return None


def normalize_source(source: str | None) -> str:
    """auto, hf, ms, pypi or local, from the option, else CORRAL_SOURCE, else auto."""
    value = (source or os.environ.get("CORRAL_SOURCE") or "auto").strip().lower()
    if value == "auto":
        return value
    if value not in SOURCE_CHOICES:
        raise SourceError(f"unknown source {value!r}: use one of auto, hf, modelscope, pypi, local")
    return SCHEMES[value]


class SourceRegistry:
    """Scheme -> source class, from every plugin's `register_sources`."""

    def __init__(self, classes: dict[str, type], owners: dict[str, str] | None = None,
                 conflicts: list[str] | None = None):
        self.classes = dict(classes)
        self.owners = owners or {}
        self.conflicts = conflicts or []

    @classmethod
    def from_plugins(cls, plugin_manager=None) -> "SourceRegistry":
        if plugin_manager is None:
            from corral.registry.plugins import PluginManager
            plugin_manager = PluginManager()
        winners, conflicts = plugin_manager.registrations("register_sources")
        return cls({k: r.value for k, r in winners.items()}, {k: r.plugin for k, r in winners.items()}, conflicts)

    def schemes(self) -> list[str]:
        return sorted(self.classes)

    def create(self, scheme: str, store: ModelStore):
        if scheme not in self.classes:
            raise SourceError(f"no source is registered for {scheme!r} (registered: "
                              f"{', '.join(self.schemes()) or 'none'}); is its plugin installed and allowed "
                              "by CORRAL_PLUGINS?")
        with self.guard(scheme):
            return self.classes[scheme](store)

    @contextlib.contextmanager
    def guard(self, scheme: str):
        """A source's own bug (anything but a SourceError or an OSError) becomes one SourceError line
        naming the plugin, not a traceback."""
        try:
            yield
        except (SourceError, OSError):
            raise
        except Exception as e:
            raise SourceError(f"the {scheme!r} source of plugin {self.owners.get(scheme, '?')} failed: "
                              f"{type(e).__name__}: {e}") from e


class Resolver:
    """Picks the source for a reference and fetches it; one per resolve (it holds the store)."""

    def __init__(self, store: ModelStore | None = None, plugin_manager=None,
                 manifests: ManifestRegistry | None = None):
        self.store = store or ModelStore()
        self.sources = SourceRegistry.from_plugins(plugin_manager)
        self.manifests = manifests if manifests is not None else ManifestRegistry.load(self.store.root)

    def candidates(self, ref: ModelRef, source: str) -> list[ModelRef]:
        """Concrete references to try, in order (more than one only for auto)."""
        if ref.scheme:
            if source not in ("auto", ref.scheme):
                logger.info("%s names its source; ignoring --source %s", ref.text, source)
            return [ref]
        if ref.manifest is None:  # a bare hub id
            hubs = ["hf", "ms"] if source == "auto" else [source]
            if any(h not in ("hf", "ms") for h in hubs):
                raise SourceError(f"{ref.id} is a hub id; --source {source} cannot fetch it (use hf or modelscope)")
            return [ModelRef(h, ref.id, ref.revision, text=ref.text) for h in hubs]
        ids = ref.manifest.source_ids()
        wanted = list(ids) if source == "auto" else [source]
        missing = [s for s in wanted if s not in ids]
        if missing:
            have = ", ".join(ids) or "none"
            raise SourceError(f"manifest {ref.manifest.name} has no {missing[0]} id (it has: {have})")
        refs = []
        for scheme in wanted:
            if scheme == "local":
                refs.append(_local_ref(ids[scheme], ref.manifest))
            elif scheme == "pypi":
                refs.append(ModelRef("pypi", ids[scheme], manifest=ref.manifest, text=ref.text))
            else:
                repo, revision = _split_revision(ids[scheme])
                refs.append(ModelRef(scheme, repo, revision, manifest=ref.manifest, text=ref.text))
        return refs

    def stored(self, ref: ModelRef) -> StoredModel | None:
        """A complete store copy of `ref` (any of its candidate sources), if one passes verification."""
        for model in find_stored(self.store, ref, exact=True):
            if not self.store.verify(model):
                return model
        return None

    def resolve(self, ref: ModelRef, source: str, progress: DownloadProgress, update: bool = False) -> Path:
        candidates = self.candidates(ref, source)
        if source == "auto" and len(candidates) > 1:
            stored = self.stored(ref)
            if stored is not None and not update:
                progress.set_state("ready")
                return stored.path
            if stored is not None and (same := [c for c in candidates if c.scheme == stored.source]):
                return self._update(same[0], progress)
        failed: list[SourceError] = []
        for i, cand in enumerate(candidates):
            src = self.sources.create(cand.scheme, self.store)
            progress.source = cand.scheme
            try:
                with self.sources.guard(cand.scheme):
                    if i < len(candidates) - 1 and hasattr(src, "probe"):
                        src.probe()  # auto: an unreachable hub falls through to the next source
                    path = self._fetch(src, cand, progress, update)
            except (HubUnreachableError, GatedRepoError, ModelNotFoundError) as e:
                # auto: a hub that is down, gated without a token (Llama 2 on the HF Hub, open on
                # ModelScope) or without the repository falls through to the next source
                failed.append(e)
                if i == len(candidates) - 1:
                    raise _combined(failed) from None
                logger.warning("%s; trying the next source", e)
                continue
            progress.set_state("ready")
            return Path(path)
        raise SourceError(f"no source could provide {ref.text}")

    def _update(self, ref: ModelRef, progress: DownloadProgress) -> Path:
        """`pull` of a model the store holds: refresh it from the source it came from. Another hub
        would download a second copy; with its own hub unreachable the copy is kept."""
        progress.source = ref.scheme
        with self.sources.guard(ref.scheme):
            path = self._fetch(self.sources.create(ref.scheme, self.store), ref, progress, update=True)
        progress.set_state("ready")
        return path

    def _fetch(self, src, ref: ModelRef, progress: DownloadProgress, update: bool) -> Path:
        """`src.fetch`, except for the update of a complete hub copy: fetched into the staging
        store, swapped in once complete (and only if it changed). A failed update keeps the copy."""
        model_dir = self.store.dir_for(ref.scheme, ref.id, ref.revision)
        stored = self.store.complete_copy(model_dir) if update and isinstance(src, HubSource) else None
        if stored is None:
            return Path(src.fetch(ref, progress, update=update))
        with self.store.lock(model_dir):
            staging = self.store.stage_update(stored)
            try:
                updater = self.sources.create(ref.scheme, self.store.updates())
                staged = Path(updater.fetch(ref, progress, update=True))
            except BaseException as e:
                logger.warning("%s: update failed (%s); keeping the stored copy %s", ref, str(e) or type(e).__name__,
                               model_dir)
                if isinstance(e, SourceError):
                    return model_dir
                raise
            new = self.store.read(staged)
            if new.commit == stored.commit and new.files == stored.files:
                self.store.drop_update(staging)  # nothing changed
            else:
                self.store.swap_in(staged, model_dir)
        return model_dir


def _combined(errors: list[SourceError]) -> SourceError:
    """One error for every source that failed: the error itself when there is one, else the
    messages joined, as the class they share (or SourceError)."""
    if len(errors) == 1:
        return errors[0]
    message = "; ".join(str(e) for e in errors)
    kinds = {type(e) for e in errors}
    if kinds == {HubUnreachableError}:
        return HubUnreachableError(message, endpoint=errors[0].endpoint)
    kind = kinds.pop() if len(kinds) == 1 else SourceError
    return kind(message)


def find_stored(store: ModelStore, ref: ModelRef, exact: bool = False,
                include_partial: bool = False) -> list[StoredModel]:
    """Store copies that `ref` names: by manifest name or ids, hub id, package, or path. A hub id
    without a revision names every stored revision unless `exact`."""
    models = store.models(include_partial=include_partial)
    if ref.scheme in ("local", "gguf"):
        path = Path(ref.id).expanduser().resolve()
        return [m for m in models if m.path == path or m.origin == str(path)]
    if ref.scheme == "pypi":
        return [m for m in models if m.source == "pypi" and m.repo == ref.id]
    if ref.manifest is not None:
        ids = {(s, *_split_revision(i)) for s, i in ref.manifest.source_ids().items() if s in ("hf", "ms")}
        return [m for m in models if m.manifest == ref.manifest.name or (m.source, m.repo, m.revision) in ids
                or (m.source == "pypi" and m.repo == ref.manifest.pypi)]
    hubs = (ref.scheme,) if ref.scheme else ("hf", "ms")
    return [m for m in models if m.source in hubs and m.repo == ref.id
            and (m.revision == ref.revision or (ref.revision is None and not exact))]


def _as_progress(progress, name: str) -> DownloadProgress:
    if isinstance(progress, DownloadProgress):
        if not progress.name:
            progress.name = name
        return progress
    return DownloadProgress(name=name, callback=progress, bars=sys.stderr.isatty())


def resolve_model(ref: str, *, source: str | None = None, plugin_manager=None,
                  progress: DownloadProgress | Callable[[DownloadProgress], None] | None = None,
                  update: bool = False, store: ModelStore | None = None) -> Path:
    """The local HF directory (config.json, tokenizer, weights) of model reference `ref`,
    downloading or converting it first when needed.

    `source`: auto (default; env CORRAL_SOURCE), hf, modelscope, pypi or local. `progress`: a
    DownloadProgress the caller reads (the server shows it in /v1/models) or a callback that
    receives one on every change. `update`: ask the hub for the revision's current files even when
    a complete copy is stored (`corral pull`). Raises the SourceError subclasses of
    corral.registry.errors, each with a one-line message.
    """
    resolver = Resolver(store, plugin_manager)
    prog = _as_progress(progress, ref)
    try:
        return resolver.resolve(parse_ref(ref, resolver.manifests), normalize_source(source), prog, update)
    except BaseException as e:
        prog.set_state("error", str(e) or type(e).__name__)
        raise
