"""The Hugging Face Hub, or any mirror of it (HF_ENDPOINT=https://hf-mirror.com), through the
`huggingface_hub` client: model info with file metadata, HEAD /resolve for the download location,
ranged GETs that resume `<file>.incomplete`. HF_TOKEN opens gated and private repositories."""
import importlib.metadata
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from corral.download import FileProgress, HubSource, RemoteFile, RemoteSnapshot, incomplete_path
from corral.registry.errors import CorruptFileError, GatedRepoError, ModelNotFoundError, SourceError
from corral.registry.hookspecs import hookimpl

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRANSPORT_ERRORS = {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "ConnectionError",
                     "Timeout", "ProxyError", "OfflineModeIsEnabled"}


def _client_info() -> dict:
    try:
        return {"library_name": "corral", "library_version": importlib.metadata.version("corral")}
    except importlib.metadata.PackageNotFoundError:
        return {"library_name": "corral"}


def _is_transport_error(e: BaseException) -> bool:
    return any(cls.__name__ in _TRANSPORT_ERRORS for cls in type(e).__mro__)


def _bar_class(fp: FileProgress):
    """A tqdm stand-in for huggingface_hub's http_get that feeds corral's progress."""

    class Bar:
        def __init__(self, *args, total=None, initial=0, **kwargs):
            fp.open_bar()
            if initial:
                fp.update(initial)  # bytes of the partial file being resumed

        def update(self, n=1):
            fp.update(n)

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return Bar


class HuggingFaceSource(HubSource):
    scheme = "hf"
    label = "the Hugging Face Hub"
    default_revision = "main"
    mirror = "https://hf-mirror.com"

    @property
    def unreachable_hint(self) -> str:
        """Names no endpoint already in use."""
        endpoint = self.endpoint()
        if endpoint == DEFAULT_ENDPOINT:
            return f"try --source modelscope, or set HF_ENDPOINT to a mirror that you can reach (e.g. {self.mirror})"
        if endpoint == self.mirror:
            return "try --source modelscope, or unset HF_ENDPOINT to use the Hugging Face Hub itself"
        return (f"try --source modelscope, or check HF_ENDPOINT ({endpoint}): it must be the root of the Hub or "
                "of a mirror of it")

    def endpoint(self) -> str:
        return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")

    @staticmethod
    def token() -> str | None:
        return os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's saved login, if any

    def snapshot(self, repo: str, revision: str) -> RemoteSnapshot:
        from huggingface_hub import HfApi
        api = HfApi(endpoint=self.endpoint(), token=self.token(), **_client_info())
        try:
            info = api.model_info(repo, revision=revision, files_metadata=True, timeout=30)
        except Exception as e:
            raise self.map_error(e, repo, revision) or e
        files = [RemoteFile(path=s.rfilename, size=s.lfs.size if s.lfs else s.size,
                            sha256=s.lfs.sha256 if s.lfs else None, git_oid=None if s.lfs else s.blob_id)
                 for s in info.siblings or []]
        return RemoteSnapshot(repo=repo, revision=revision, commit=info.sha, files=files)

    def download(self, snap: RemoteSnapshot, remote: RemoteFile, model_dir: Path, progress: FileProgress) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
        target = model_dir / remote.path
        part = incomplete_path(target)
        part.parent.mkdir(parents=True, exist_ok=True)
        endpoint, token = self.endpoint(), self.token()
        url = hf_hub_url(snap.repo, remote.path, revision=snap.commit or snap.revision, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, **_client_info())
            size = meta.size if meta.size is not None else remote.size
            headers = build_hf_headers(token=token, **_client_info())
            if urlsplit(meta.location).netloc != urlsplit(url).netloc:
                headers.pop("authorization", None)  # a signed CDN url takes no token
            with open(part, "ab") as out:
                if size is not None and out.tell() > size:
                    out.seek(0)
                    out.truncate()
                http_get(meta.location, out, resume_size=out.tell(), headers=headers, expected_size=size,
                         displayed_filename=remote.path, tqdm_class=_bar_class(progress))
        except Exception as e:
            raise self.map_error(e, snap.repo, snap.revision, remote.path) or e
        os.replace(part, target)

    def map_error(self, e: Exception, repo: str, revision: str, filename: str | None = None) -> Exception | None:
        """corral's error for a huggingface_hub or transport error; None leaves `e` as it is."""
        from huggingface_hub import errors
        where = f"{self.label} at {self.endpoint()}"
        if isinstance(e, SourceError):
            return None
        if isinstance(e, errors.GatedRepoError):
            return GatedRepoError(f"{repo} on {where} is gated: accept its license at {self.endpoint()}/{repo}, "
                                  "then pass a token that has access: export HF_TOKEN=hf_... (or `hf auth login`)")
        if isinstance(e, errors.RevisionNotFoundError):
            return ModelNotFoundError(f"revision {revision!r} of {repo} does not exist on {where}")
        if isinstance(e, errors.RepositoryNotFoundError):
            return ModelNotFoundError(f"repository {repo} does not exist on {where} "
                                      "(check the id; a private repository needs HF_TOKEN)")
        if isinstance(e, getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)):
            return ModelNotFoundError(f"{filename} of {repo}@{revision} does not exist on {where}")
        if isinstance(e, errors.HfHubHTTPError) and e.response is not None:
            status = e.response.status_code
            if status >= 500 or status == 429:
                return self.unreachable(f"HTTP {status}")
            if status in (401, 403):
                return GatedRepoError(f"{where} refused access to {repo} (HTTP {status}): check HF_TOKEN")
            # the Hub names its 4xx answers (repository, revision, entry not found), mapped above; any
            # other is not the Hub's, and auto falls back to the next source
            return self.unreachable(f"it answered HTTP {status} for {repo}, which is not an answer of the Hub API")
        if _is_transport_error(e):
            return self.unreachable(f"{type(e).__name__}: {e}")
        if isinstance(e, json.JSONDecodeError):  # a captive portal, a proxy's login page, a wrong HF_ENDPOINT
            return self.unreachable("it answered with something that is not the Hub API (an HTML page?); "
                                    "HF_ENDPOINT must be the root of the Hub or of a mirror of it")
        if isinstance(e, OSError) and "Consistency check failed" in str(e):
            return CorruptFileError(str(e).splitlines()[0])
        return None


@hookimpl
def register_sources(register):
    register("hf", HuggingFaceSource)
