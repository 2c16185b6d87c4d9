"""A Hugging Face Hub–shaped file server on loopback, for testing downloads without a network.

It serves local directories as model repos with the routes ``huggingface_hub`` uses for
``snapshot_download`` and ``hf_hub_download`` (and so ``transformers.from_pretrained``):

- ``GET /api/models/{repo_id}`` and ``GET /api/models/{repo_id}/revision/{revision}`` — model
  info with ``sha`` and ``siblings`` (with ``blobId``, ``size`` and ``lfs`` when ``?blobs=true``);
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}]`` — the file tree (``?recursive=true``);
- ``POST /api/models/{repo_id}/paths-info/{revision}`` — tree entries for given ``paths``;
- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` — the file, with ``X-Repo-Commit``,
  ``ETag`` (git blob sha1, or sha256 for LFS-sized files, which also get ``X-Linked-Etag`` and
  ``X-Linked-Size``), ``Content-Length`` and single byte ranges (``Range: bytes=a-b``).

Unknown repos, revisions and files answer 404 with the ``X-Error-Code`` header
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) that ``huggingface_hub`` turns into
``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``EntryNotFoundError``.

Revisions accepted: ``main`` and the repo's commit sha. Files are hashed once when the server
starts; serving a file that changed afterwards is the caller's mistake.

Standard library only: no torch, no huggingface_hub needed to run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: Suffixes stored with Git LFS on the real Hub (as its default ``.gitattributes`` does).
LFS_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".onnx", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".npy", ".npz",
     ".gz", ".zip", ".tar", ".parquet", ".arrow", ".model", ".pb", ".tflite", ".ot"}
)  # fmt: skip
#: Files at least this large are stored with LFS whatever their suffix.
LFS_MIN_SIZE = 10 * 1024 * 1024

# Version-control and huggingface_hub local-dir metadata are not repo files.
_IGNORED_DIRS = frozenset({".git", ".cache"})
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 1 << 20
_TIMESTAMP = "2024-01-01T00:00:00.000Z"
# huggingface_hub fetches this registry (for its user agent) once a day; an empty one is valid.
_EMPTY_AGENT_REGISTRY: dict[str, object] = {"standardEnvVars": [], "harnesses": {}}


@dataclass(frozen=True)
class ServedRequest:
    """One request the server answered: method, raw path (with query), status, Range header."""

    method: str
    path: str
    status: int
    range: str | None = None

    @property
    def is_download(self) -> bool:
        """Whether this was a ``GET`` of file content (``/resolve/``)."""
        return self.method == "GET" and "/resolve/" in self.path


@dataclass(frozen=True)
class RepoFile:
    """A file of a served repo, hashed the way the Hub reports it."""

    path: str
    local: Path
    size: int
    blob_id: str
    sha256: str | None  # set for LFS files only

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size}
        entry["path"] = self.path
        if self.sha256 is not None:
            pointer = _lfs_pointer(self.sha256, self.size)
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(pointer)}
        return entry

    def sibling(self, blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            sibling.update(blobId=self.blob_id, size=self.size)
            if self.sha256 is not None:
                pointer = _lfs_pointer(self.sha256, self.size)
                sibling["lfs"] = {
                    "sha256": self.sha256, "size": self.size, "pointerSize": len(pointer)
                }  # fmt: skip
        return sibling


@dataclass(frozen=True)
class Repo:
    """A served repo: its id, commit sha and files by path."""

    repo_id: str
    sha: str
    files: Mapping[str, RepoFile]

    def directories(self) -> list[str]:
        found = {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}
        return sorted(found)

    def info(self, blobs: bool) -> dict[str, Any]:
        author = self.repo_id.split("/")[0] if "/" in self.repo_id else None
        return {
            "_id": self.sha[:24], "id": self.repo_id, "modelId": self.repo_id, "author": author,
            "sha": self.sha, "lastModified": _TIMESTAMP, "createdAt": _TIMESTAMP,
            "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": [], "library_name": None,
            "siblings": [f.sibling(blobs) for f in self.files.values()],
            "usedStorage": sum(f.size for f in self.files.values()),
        }  # fmt: skip

    def tree(self, under: str, recursive: bool) -> list[dict[str, Any]] | None:
        """Entries below ``under`` ("" for the root); None if ``under`` is not a directory."""
        dirs = self.directories()
        if under and under not in dirs:
            return None
        prefix = f"{under}/" if under else ""

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries = [_dir_entry(d) for d in dirs if wanted(d)]
        entries += [f.tree_entry() for p, f in self.files.items() if wanted(p)]
        return entries

    def paths_info(self, paths: list[str]) -> list[dict[str, Any]]:
        dirs = set(self.directories())
        found = [self.files[p].tree_entry() for p in paths if p in self.files]
        return found + [_dir_entry(p) for p in paths if p in dirs]


@dataclass
class _State:
    repos: Mapping[str, Repo]
    log: list[ServedRequest]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, entry: ServedRequest) -> None:
        with self.lock:
            self.log.append(entry)

    def find_repo(self, path: str) -> tuple[Repo, str] | None:
        """The repo whose id prefixes ``path`` and the rest of the path after it."""
        for repo_id in sorted(self.repos, key=len, reverse=True):
            if path == repo_id or path.startswith(f"{repo_id}/"):
                return self.repos[repo_id], path[len(repo_id) :]
        return None


@contextlib.contextmanager
def serve_repos(
    repos: Mapping[str, Path],
    revision_sha: str | None = None,
    *,
    log: list[ServedRequest] | None = None,
) -> Iterator[str]:
    """Serve local directories as Hub model repos on ``http://127.0.0.1:<free port>``.

    Args:
        repos: repo id (``"org/name"``) → directory whose files (recursively) form the repo.
        revision_sha: the 40-hex commit sha every repo reports; by default each repo gets a
            sha derived from its content.
        log: if given, every request served is appended to it (a :class:`ServedRequest`), so a
            test can assert what was downloaded, e.g. that a second call hit the cache.

    Yields:
        The base URL, for ``HF_ENDPOINT`` or ``endpoint=``. The server stops on exit.

    Example::

        log: list[ServedRequest] = []
        with serve_repos({"test-org/tiny": model_dir}, log=log) as url:
            subprocess.run([...], env={**os.environ, "HF_ENDPOINT": url}, check=True)
        assert [r for r in log if r.is_download]
    """
    if revision_sha is not None and not _SHA_RE.fullmatch(revision_sha):
        raise ValueError(f"revision_sha must be 40 lowercase hex digits, got {revision_sha!r}")
    state = _State(
        repos={rid: _load_repo(rid, Path(d), revision_sha) for rid, d in repos.items()},
        log=log if log is not None else [],
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="hf-file-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _load_repo(repo_id: str, directory: Path, revision_sha: str | None) -> Repo:
    if not directory.is_dir():
        raise FileNotFoundError(f"repo directory not found: {directory}")
    files = {
        p.relative_to(directory).as_posix(): _hash_file(p, p.relative_to(directory).as_posix())
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not _IGNORED_DIRS.intersection(p.relative_to(directory).parts[:-1])
    }
    digest = hashlib.sha1(repo_id.encode(), usedforsecurity=False)
    for f in files.values():
        digest.update(f"{f.path}\0{f.blob_id}\0".encode())
    return Repo(repo_id=repo_id, sha=revision_sha or digest.hexdigest(), files=files)


def _hash_file(local: Path, path: str) -> RepoFile:
    size = local.stat().st_size
    blob = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    sha256 = hashlib.sha256()
    with local.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            blob.update(chunk)
            sha256.update(chunk)
    if local.suffix.lower() not in LFS_SUFFIXES and size < LFS_MIN_SIZE:
        return RepoFile(path=path, local=local, size=size, blob_id=blob.hexdigest(), sha256=None)
    # A Git LFS file's blob in git is its pointer, not its content.
    pointer = _lfs_pointer(sha256.hexdigest(), size)
    pointer_blob = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer, usedforsecurity=False)
    return RepoFile(
        path=path, local=local, size=size, blob_id=pointer_blob.hexdigest(),
        sha256=sha256.hexdigest(),
    )  # fmt: skip


def _lfs_pointer(sha256: str, size: int) -> bytes:
    spec = "https://git-lfs.github.com/spec/v1"
    return f"version {spec}\noid sha256:{sha256}\nsize {size}\n".encode()


def _dir_entry(path: str) -> dict[str, Any]:
    oid = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive byte span of a ``Range`` header (whole file if absent); None if unsatisfiable."""
    if header is None:
        return (0, size - 1)
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    return (start, end) if start <= end and start < size else None


def _handler_class(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = state

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clipserve-hf-test-server"
    hub: _State

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log; requests are recorded in ``hub.log`` instead."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        try:
            if path.startswith("/api/models/"):
                self._api(method, path[len("/api/models/") :], query)
            elif path == "/api/agent-harnesses":
                self._json(_EMPTY_AGENT_REGISTRY, None)
            elif "/resolve/" in path:
                self._resolve(method, path)
            else:
                self._error(HTTPStatus.NOT_FOUND, None, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _api(self, method: str, rest: str, query: dict[str, list[str]]) -> None:
        found = self.hub.find_repo(unquote(rest))
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", "Repository not found")
            return
        repo = found[0]
        # Revisions and paths come percent-encoded (``refs%2Fpr%2F1``): split first, then decode.
        kind, _, arg = rest[len(repo.repo_id) :].lstrip("/").partition("/")
        route = (method, kind)
        if route == ("GET", "") and not arg:
            self._json(repo.info(blobs=_truthy(query, "blobs")), repo)
        elif route == ("GET", "revision"):
            if self._check_revision(repo, arg):
                self._json(repo.info(blobs=_truthy(query, "blobs")), repo)
        elif route == ("GET", "tree"):
            self._tree(repo, arg, recursive=_truthy(query, "recursive"))
        elif route == ("POST", "paths-info"):
            if self._check_revision(repo, arg):
                self._json(repo.paths_info(self._form_paths()), repo)
        else:
            self._error(HTTPStatus.NOT_FOUND, None, "Not Found", repo)

    def _tree(self, repo: Repo, arg: str, recursive: bool) -> None:
        revision, _, under = arg.partition("/")
        if not self._check_revision(repo, revision):
            return
        entries = repo.tree(unquote(under).strip("/"), recursive)
        if entries is None:
            self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", "Entry not found", repo)
        else:
            self._json(entries, repo)

    def _resolve(self, method: str, raw_path: str) -> None:
        repo_part, _, rest = raw_path.lstrip("/").partition("/resolve/")
        found = self.hub.find_repo(unquote(repo_part))
        if found is None or found[1]:
            self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", "Repository not found")
            return
        repo = found[0]
        revision, _, filename = rest.partition("/")
        if not self._check_revision(repo, unquote(revision)):
            return
        file = repo.files.get(unquote(filename))
        if file is None:
            self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", "Entry not found", repo)
        elif method not in ("GET", "HEAD"):
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, None, "Method not allowed", repo)
        else:
            self._send_file(method, repo, file)

    def _send_file(self, method: str, repo: Repo, file: RepoFile) -> None:
        range_header = self.headers.get("Range")
        span = _parse_range(range_header, file.size) if file.size else (0, -1)
        if span is None:
            self._record(method, HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{file.size}")
            self._finish_headers(repo, 0)
            return
        start, end = span
        partial = range_header is not None and file.size > 0
        status = HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK
        self._record(method, status)
        self.send_response(status)
        self.send_header("ETag", f'"{file.etag}"')
        if file.sha256 is not None:
            self.send_header("X-Linked-Etag", f'"{file.sha256}"')
            self.send_header("X-Linked-Size", str(file.size))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{file.size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self._finish_headers(repo, end - start + 1)
        if method == "GET":
            self._copy_bytes(file.local, start, end - start + 1)

    def _copy_bytes(self, local: Path, start: int, length: int) -> None:
        with local.open("rb") as fh:
            fh.seek(start)
            while length > 0 and (chunk := fh.read(min(_CHUNK, length))):
                self.wfile.write(chunk)
                length -= len(chunk)

    def _check_revision(self, repo: Repo, revision: str) -> bool:
        if unquote(revision) in ("main", repo.sha):
            return True
        self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", "Invalid rev id", repo)
        return False

    def _form_paths(self) -> list[str]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            paths = json.loads(body).get("paths", [])
            return [str(p) for p in (paths if isinstance(paths, list) else [paths])]
        return parse_qs(body).get("paths", [])

    def _json(self, payload: object, repo: Repo | None) -> None:
        body = json.dumps(payload).encode()
        self._record(self.command, HTTPStatus.OK)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self._finish_headers(repo, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(
        self, status: HTTPStatus, code: str | None, message: str, repo: Repo | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        self._record(self.command, status)
        self.send_response(status)
        if code is not None:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self._finish_headers(repo, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _finish_headers(self, repo: Repo | None, length: int) -> None:
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _record(self, method: str, status: int) -> None:
        self.hub.record(ServedRequest(method, self.path, int(status), self.headers.get("Range")))


def _truthy(query: dict[str, list[str]], key: str) -> bool:
    return any(v.lower() in ("1", "true", "yes") for v in query.get(key, []))
