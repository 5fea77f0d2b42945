"""Loopback servers that speak the real protocols of the Hugging Face Hub and of ModelScope, as far as
their client libraries use them to download a model.

Hugging Face (huggingface_hub):
    GET  /api/models/{repo}[/revision/{rev}]?blobs=true   model info, siblings with size, blobId, lfs
    HEAD /{repo}/resolve/{rev}/{file}     200 with X-Repo-Commit, ETag, Content-Length (regular files);
                                          302 to a CDN host with X-Linked-Size / X-Linked-Etag (LFS files)
    GET  /{repo}/resolve/{rev}/{file}     the bytes, or the same redirect
    GET  /cdn/{sha256}                    LFS bytes, on another host name (localhost, not 127.0.0.1)
    errors: 401 RepoNotFound, 404 RevisionNotFound / EntryNotFound, 401/403 GatedRepo (X-Error-Code)
    No X-Xet-* header is ever sent, so the client never switches to xet.

ModelScope (modelscope):
    GET  /api/v1/models/{repo}/repo/files?Revision=&Recursive=   {"Code": 200, "Data": {"Files": [...]}}, each
                                          file with the commit that last changed it (Revision, CommittedDate)
    GET  /api/v1/models/{repo}/repo?Revision=&FilePath=          the bytes, at a branch or any commit
    errors: 404 with {"Code": 404, "Message": ..., "Success": false}

Every file GET honours Range (206 + Content-Range, 416 past the end). Knobs for the tests:
`corrupt` (file name -> how many GETs to corrupt), `cut` (file name -> bytes after which the next
GET drops the connection), `gated` and `tokens` (HF), and `requests`, the log of what came in.
"""
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pth")


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = ""
    gated: bool = False
    parent: "Repo | None" = None  # the commit before this one
    committed_at: int = 1_700_000_000

    def __post_init__(self):
        if not self.commit:
            digest = hashlib.sha1()
            for name in sorted(self.files):
                digest.update(name.encode() + hashlib.sha256(self.files[name]).digest())
            self.commit = digest.hexdigest()

    def updated(self, changes: dict[str, bytes]) -> "Repo":
        """The next commit: these files changed, the rest as they were."""
        return Repo({**self.files, **changes}, gated=self.gated, parent=self, committed_at=self.committed_at + 60)

    def at(self, commit: str) -> "Repo | None":
        repo = self
        while repo is not None and repo.commit != commit:
            repo = repo.parent
        return repo

    def last_change(self, name: str) -> "Repo":
        """The commit that last changed file `name`."""
        repo = self
        while repo.parent is not None and repo.parent.files.get(name) == repo.files[name]:
            repo = repo.parent
        return repo

    @classmethod
    def from_dir(cls, path: Path, extra: dict[str, bytes] | None = None, skip: tuple[str, ...] = ()) -> "Repo":
        files = {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file() and p.name not in skip}
        files.update(extra or {})
        return cls(files)


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


@dataclass
class Request:
    method: str
    path: str
    headers: object  # email.message.Message


class FakeHub:
    """Base: a threaded loopback HTTP server with a request log and failure knobs."""

    def __init__(self, repos: dict[str, Repo] | None = None):
        self.repos: dict[str, Repo] = dict(repos or {})
        self.requests: list[Request] = []
        self.corrupt: dict[str, int] = {}
        self.cut: dict[str, int] = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            owner = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def gets(self, fragment: str = "") -> list[Request]:
        """File GETs (not HEADs, not API calls) whose path contains `fragment`."""
        return [r for r in self.requests if r.method == "GET" and fragment in unquote(r.path) and self.is_file_path(r.path)]

    def is_file_path(self, path: str) -> bool:
        raise NotImplementedError

    def route(self, h: "_Handler", method: str, path: str, query: dict) -> None:
        raise NotImplementedError

    def take(self, knob: dict, name: str):
        with self.lock:
            if name in knob:
                value = knob[name]
                if knob is self.corrupt:
                    knob[name] -= 1
                    if knob[name] <= 0:
                        del knob[name]
                else:
                    del knob[name]
                return value
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeHub

    def log_message(self, *args):
        pass

    def _dispatch(self, method: str):
        parts = urlsplit(self.path)
        with self.owner.lock:
            self.owner.requests.append(Request(method, self.path, self.headers))  # case-insensitive
        self.owner.route(self, method, unquote(parts.path), {k: v[0] for k, v in parse_qs(parts.query).items()})

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, method: str = "GET"):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def json(self, status: int, data, headers: dict | None = None, method: str = "GET"):
        self.reply(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})},
                   method)

    def send_file(self, data: bytes, name: str, method: str, headers: dict | None = None):
        """The bytes of one file, honouring Range, with the knobs applied."""
        total = len(data)
        start, end = 0, total - 1
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
            if start >= total:
                return self.reply(416, b"", {"Content-Range": f"bytes */{total}"}, method)
            status = 206
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **(headers or {})}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        body = data[start:end + 1]
        if method == "GET" and self.owner.take(self.owner.corrupt, name):
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        cut = self.owner.take(self.owner.cut, name) if method == "GET" else None
        if cut is None:
            return self.reply(status, body, headers, method)
        self.send_response(status)  # announce everything, send `cut` bytes, drop the connection
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


class FakeHFHub(FakeHub):
    """The Hugging Face Hub API (or a mirror of it)."""

    def __init__(self, repos=None, tokens: tuple[str, ...] = ()):
        super().__init__(repos)
        self.tokens = set(tokens)

    @property
    def cdn_url(self) -> str:
        return f"http://localhost:{self.port}"  # another host name: the client treats it as a CDN

    def is_file_path(self, path: str) -> bool:
        return "/resolve/" in path or path.startswith("/cdn/")

    def _token(self, h: _Handler) -> str | None:
        auth = h.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _repo_error(self, h: _Handler, repo: str | None, method: str) -> bool:
        if repo is None:
            h.reply(401, b"Repository not found", {"X-Error-Code": "RepoNotFound",
                                                   "X-Error-Message": "Repository not found"}, method)
            return True
        return False

    def _revision(self, repo: Repo, rev: str) -> bool:
        return rev in ("main", repo.commit)

    def route(self, h, method, path, query):
        if path in ("/", ""):
            return h.reply(200, b"fake hub", method=method)
        if path.startswith("/cdn/"):
            sha = path.rsplit("/", 1)[-1]
            for repo in self.repos.values():
                for name, data in repo.files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        return h.send_file(data, name, method, {"ETag": f'"{sha}"'})
            return h.reply(404, b"no such blob", method=method)
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            repo_id, _, rev = rest.partition("/revision/")
            repo = self.repos.get(repo_id)
            if self._repo_error(h, repo, method):
                return None
            if rev and not self._revision(repo, rev):
                return h.reply(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"}, method)
            return h.json(200, self.model_info(repo_id, repo), method=method)
        match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if not match:
            return h.reply(404, b"not found", method=method)
        repo_id, rev, name = match.groups()
        repo = self.repos.get(repo_id)
        if self._repo_error(h, repo, method):
            return None
        if repo.gated and self._token(h) not in self.tokens:
            status = 403 if self._token(h) else 401
            return h.reply(status, b"gated", {"X-Error-Code": "GatedRepo", "X-Error-Message":
                           f"Access to model {repo_id} is restricted. You must have access to it."}, method)
        if not self._revision(repo, rev):
            return h.reply(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"}, method)
        if name not in repo.files:
            return h.reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit},
                           method)
        data = repo.files[name]
        if is_lfs(name):
            sha = hashlib.sha256(data).hexdigest()
            return h.reply(302, b"", {"Location": f"{self.cdn_url}/cdn/{sha}?expires=0&sig=fake",
                                      "X-Repo-Commit": repo.commit, "X-Linked-Etag": f'"{sha}"',
                                      "X-Linked-Size": str(len(data)), "ETag": f'"{git_oid(data)}"'}, method)
        return h.send_file(data, name, method, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_oid(data)}"'})

    def model_info(self, repo_id: str, repo: Repo) -> dict:
        siblings = []
        for name, data in sorted(repo.files.items()):
            entry = {"rfilename": name, "size": len(data), "blobId": git_oid(data)}
            if is_lfs(name):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        return {"_id": "0" * 24, "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "tags": [], "siblings": siblings}


class FakeModelScope(FakeHub):
    """The ModelScope API that the modelscope library uses to list and download a model's files."""

    def is_file_path(self, path: str) -> bool:
        return "FilePath=" in path

    def route(self, h, method, path, query):
        if path in ("/", ""):
            return h.reply(200, b"fake modelscope", method=method)
        match = re.fullmatch(r"/api/v1/models/(.+?)/repo(/files)?", path)
        if not match:
            return h.json(404, {"Code": 404, "Message": f"{path} not found", "Success": False}, method=method)
        repo_id, listing = match.groups()
        head = self.repos.get(repo_id)
        revision = query.get("Revision", "master")
        repo = head if revision == "master" else head.at(revision) if head else None
        if repo is None:
            return h.json(404, {"Code": 404, "Message": f"model {repo_id} revision {revision} not found",
                                "RequestId": "fake", "Success": False}, method=method)
        if listing:
            files = [{"Name": n, "Path": n, "Type": "blob", "Size": len(d), "Sha256": hashlib.sha256(d).hexdigest(),
                      "Revision": repo.last_change(n).commit, "CommittedDate": repo.last_change(n).committed_at,
                      "IsLFS": is_lfs(n), "Mode": "100644"} for n, d in sorted(repo.files.items())]
            return h.json(200, {"Code": 200, "Data": {"Files": files}, "Message": "success", "RequestId": "fake",
                                "Success": True}, method=method)
        name = query.get("FilePath", "")
        if name not in repo.files:
            return h.json(404, {"Code": 404, "Message": f"file {name} not found", "Success": False}, method=method)
        return h.send_file(repo.files[name], name, method)


def closed_port_url() -> str:
    """An endpoint where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
