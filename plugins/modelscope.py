"""ModelScope (MODELSCOPE_ENDPOINT, default https://modelscope.cn) through the `modelscope` library's
hub client: the repo file listing with sizes, sha256 and the commit that last changed each file (the
newest of those pins the snapshot), then one ranged, resumable GET per file at that commit, through
the client's download stream (its own download_file draws tqdm bars that nothing turns off).
MODELSCOPE_API_TOKEN opens private repositories."""
import json
import os
from pathlib import Path

from corral.download import FileProgress, HubSource, RemoteFile, RemoteSnapshot, incomplete_path
from corral.registry.errors import (CorruptFileError, GatedRepoError, ModelNotFoundError, SourceError,
                                    SourceUnavailableError)
from corral.registry.hookspecs import hookimpl

DEFAULT_ENDPOINT = "https://modelscope.cn"
CHUNK_SIZE = 1 << 16


def _client():
    """The modelscope library's hub package, or a one-line error saying how to install it."""
    try:
        import modelscope_hub  # shipped with modelscope >= 1.40
        return modelscope_hub
    except ImportError:
        pass
    try:
        import modelscope  # noqa: F401
    except ImportError:
        raise SourceUnavailableError("the ModelScope source needs the modelscope library: "
                                     "pip install 'modelscope>=1.40'") from None
    raise SourceUnavailableError("the ModelScope source needs modelscope >= 1.40: "
                                 "pip install -U 'modelscope>=1.40'")


class ModelScopeSource(HubSource):
    scheme = "ms"
    label = "ModelScope"
    default_revision = "master"
    unreachable_hint = "try --source hf, or set MODELSCOPE_ENDPOINT to an endpoint that you can reach"

    def __init__(self, store):
        super().__init__(store)
        self._hub_api = None

    def endpoint(self) -> str:
        if os.environ.get("MODELSCOPE_ENDPOINT"):
            return os.environ["MODELSCOPE_ENDPOINT"].rstrip("/")
        if os.environ.get("MODELSCOPE_DOMAIN"):  # the library's older variable
            domain = os.environ["MODELSCOPE_DOMAIN"].rstrip("/")
            return domain if "://" in domain else "https://" + domain
        return DEFAULT_ENDPOINT

    def _api(self):
        """One client per fetch, so that its download manager probes the region once."""
        if self._hub_api is None:
            self._hub_api = _client().HubApi(endpoint=self.endpoint(), user_agent={"corral": "1"},
                                             token=os.environ.get("MODELSCOPE_API_TOKEN") or None)
        return self._hub_api

    def snapshot(self, repo: str, revision: str) -> RemoteSnapshot:
        try:
            entries = self._api().legacy.list_repo_files(repo, "model", revision=revision, recursive=True)
        except Exception as e:
            raise self.map_error(e, repo, revision) or e
        blobs = [e for e in entries if e.get("Type") != "tree" and e.get("Path")]
        files = [RemoteFile(path=e["Path"], size=int(e.get("Size") or 0), sha256=e.get("Sha256") or None)
                 for e in blobs]
        # every listed file is as its last commit left it, so the newest of those commits holds them all
        newest = max(blobs, key=lambda e: e.get("CommittedDate") or 0, default={})
        return RemoteSnapshot(repo=repo, revision=revision, commit=newest.get("Revision") or None, files=files)

    def download(self, snap: RemoteSnapshot, remote: RemoteFile, model_dir: Path, progress: FileProgress) -> None:
        import requests  # the client's transport
        target = model_dir / remote.path
        part = incomplete_path(target)
        part.parent.mkdir(parents=True, exist_ok=True)
        progress.open_bar()
        try:
            with open(part, "ab") as out:
                if remote.size is not None and out.tell() > remote.size:
                    out.seek(0)
                    out.truncate()
                progress.update(out.tell())  # the partial file being resumed
                for attempt in range(1, self.max_attempts + 1):
                    try:
                        self._stream(snap, remote, out, progress)
                        break
                    except requests.RequestException:  # a dropped connection: resume
                        if attempt == self.max_attempts:
                            raise
        except Exception as e:
            raise self.map_error(e, snap.repo, snap.revision, remote.path) or e
        os.replace(part, target)

    def _stream(self, snap: RemoteSnapshot, remote: RemoteFile, out, progress: FileProgress) -> None:
        start = out.tell()
        if start and start == remote.size:
            return
        headers = {"Range": f"bytes={start}-"} if start else None
        with self._api().legacy.download_stream(snap.repo, "model", remote.path, snap.commit or snap.revision,
                                                headers=headers) as resp:
            if start and resp.status_code != 206:  # the whole file, not the rest
                out.seek(0)
                out.truncate()
                progress.update(-start)
            for chunk in resp.iter_content(CHUNK_SIZE):
                out.write(chunk)
                progress.update(len(chunk))

    def map_error(self, e: Exception, repo: str, revision: str, filename: str | None = None) -> Exception | None:
        """corral's error for a modelscope error; None leaves `e` as it is."""
        import requests
        errors = _client().errors
        where = f"{self.label} at {self.endpoint()}"
        if isinstance(e, SourceError):
            return None
        if isinstance(e, errors.NotExistError):
            what = f"{filename} of {repo}" if filename else f"repository {repo}"
            return ModelNotFoundError(f"{what} (revision {revision}) does not exist on {where}")
        if isinstance(e, (errors.AuthenticationError, errors.PermissionDeniedError)):
            return GatedRepoError(f"{where} refused access to {repo}: pass a token that has access: "
                                  "export MODELSCOPE_API_TOKEN=...")
        if isinstance(e, errors.FileIntegrityError):
            return CorruptFileError(str(e))
        if isinstance(e, json.JSONDecodeError):  # a captive portal, a proxy's login page, a wrong endpoint
            return self.unreachable("it answered with something that is not the ModelScope API (an HTML page?); "
                                    "MODELSCOPE_ENDPOINT must be the root of ModelScope")
        if isinstance(e, (errors.NetworkError, errors.ServerError, errors.RateLimitError, requests.RequestException)):
            return self.unreachable(f"{type(e).__name__}: {e}")
        return None


@hookimpl
def register_sources(register):
    register("ms", ModelScopeSource)
