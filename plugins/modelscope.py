"""ModelScope (MODELSCOPE_ENDPOINT, default https://modelscope.cn) through the `modelscope` library's
hub client: the repo file listing with sizes and sha256, then one ranged, resumable, hash-checked
download per file. MODELSCOPE_API_TOKEN opens private repositories."""
import json
import os
from pathlib import Path

from corral.download import FileProgress, HubSource, RemoteFile, RemoteSnapshot
from corral.registry.errors import (CorruptFileError, GatedRepoError, ModelNotFoundError, SourceError,
                                    SourceUnavailableError)
from corral.registry.hookspecs import hookimpl

DEFAULT_ENDPOINT = "https://modelscope.cn"


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
                                     "pip install 'corral[modelscope]'") from None
    raise SourceUnavailableError("the ModelScope source needs modelscope >= 1.40: "
                                 "pip install -U 'corral[modelscope]'")


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
            entries = self._api().list_repo_files(repo, "model", revision=revision, recursive=True)
        except Exception as e:
            raise self.map_error(e, repo, revision) or e
        files = [RemoteFile(path=f.path, size=f.size, sha256=f.sha256 or None)
                 for f in entries if not f.is_dir and f.path]
        return RemoteSnapshot(repo=repo, revision=revision, commit=None, files=files)

    def download(self, snap: RemoteSnapshot, remote: RemoteFile, model_dir: Path, progress: FileProgress) -> None:
        hub = _client()

        class Callback(hub.ProgressCallback):
            def update(self, size: int) -> None:
                progress.update(size)

        try:
            self._api().downloader.download_file(
                snap.repo, "model", remote.path, revision=snap.revision, local_dir=model_dir,
                cache_dir=self.store.root / ".cache" / "modelscope",  # its lock files stay in the store
                expected_sha256=remote.sha256, file_size=remote.size, progress_callbacks=[Callback])
        except Exception as e:
            raise self.map_error(e, snap.repo, snap.revision, remote.path) or e

    def map_error(self, e: Exception, repo: str, revision: str, filename: str | None = None) -> Exception | None:
        """corral's error for a modelscope error; None leaves `e` as it is."""
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
        if isinstance(e, (errors.NetworkError, errors.ServerError, errors.RateLimitError)):
            return self.unreachable(f"{type(e).__name__}: {e}")
        return None


@hookimpl
def register_sources(register):
    register("ms", ModelScopeSource)
