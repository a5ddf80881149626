"""A local HTTP server that answers like the Hugging Face hub, for the model manager's tests (HF_ENDPOINT).

It serves what huggingface_hub 2.x asks for when it lists and downloads a model:
  * GET  /api/models/<repo>[/revision/<rev>][?blobs=true]  the model info: commit sha and siblings (size, blobId,
                                                           lfs {sha256, size, pointerSize})
  * GET  /api/models/<repo>/tree/<rev>?recursive=true      the file list (snapshot_download's)
  * HEAD/GET /<repo>/resolve/<rev>/<path>                  small files: 200 with ETag (the git blob sha1),
                                                           X-Repo-Commit, Content-Length; LFS files: 302 to the
                                                           "CDN" with X-Linked-Etag (sha256), X-Linked-Size,
                                                           X-Repo-Commit
  * GET  /cdn/<sha256>                                     LFS content, on another host name (localhost instead
                                                           of 127.0.0.1, as the real CDN is another host)
A repository in `gated` (repo id → token) answers 401 GatedRepo, as the hub does for Llama 2, to any API or resolve
request without `Authorization: Bearer <token>` (the CDN's own links need none).
Ranges (`bytes=N-`) are honoured with 206 and Content-Range. `drop_once[path] = n` makes the first GET of that file
send n bytes of its body and close the connection; `delay` slows every 64 kB chunk down. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".model", ".pt", ".msgpack", ".h5")
CHUNK = 64 * 1024


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    commit: str
    files: dict[str, bytes]
    lfs: set[str]

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        out = {"rfilename": path, "size": len(data), "blobId": git_sha1(data)}
        if path in self.lfs:
            out["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out["size"] = len(data)
        return out


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self.drop_once: dict[str, int] = {}   # repo path of a file -> bytes sent before the connection drops
        self.delay = 0.0                      # seconds per 64 kB chunk
        self.gated: dict[str, str] = {}       # repo id -> the token that may download it
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)

    # -- set up -------------------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], lfs: set[str] | None = None) -> FakeRepo:
        h = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
        if lfs is None:
            lfs = {p for p in files if p.endswith(LFS_SUFFIXES)}
        repo = FakeRepo(repo_id, commit, dict(files), set(lfs))
        self.repos[repo_id] = repo
        return repo

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def gets(self, suffix: str) -> list[Request]:
        """GET requests whose path ends with suffix (a file name, or /cdn/<sha256>)."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]

    # -- serving ------------------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        with self._lock:
            self.requests.append(Request("HEAD" if head else "GET", path, {k.lower(): v for k, v in h.headers.items()}))
        if path.startswith("/api/models/"):
            repo_id = "/".join(path[len("/api/models/"):].split("/")[:2])
        else:
            repo_id = path[1:].split("/resolve/", 1)[0] if "/resolve/" in path else ""
        token = self.gated.get(repo_id)
        if token is not None and h.headers.get("Authorization") != f"Bearer {token}":
            return self._error(h, 401, "GatedRepo")
        if path.startswith("/api/models/"):
            return self._api(h, path[len("/api/models/"):])
        if path.startswith("/cdn/"):
            sha = path[len("/cdn/"):]
            for repo in self.repos.values():
                for name, data in repo.files.items():
                    if name in repo.lfs and hashlib.sha256(data).hexdigest() == sha:
                        return self._content(h, head, data, name, {})
            return self._error(h, 404, "EntryNotFound")
        if "/resolve/" in path:
            repo_id, rest = path[1:].split("/resolve/", 1)
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 401, "RepoNotFound")
            rev, _, name = rest.partition("/")
            if rev not in ("main", repo.commit):
                return self._error(h, 404, "RevisionNotFound")
            if name not in repo.files:
                return self._error(h, 404, "EntryNotFound")
            data = repo.files[name]
            if name in repo.lfs:
                sha = hashlib.sha256(data).hexdigest()
                h.send_response(302)
                h.send_header("Location", f"{self.cdn}/cdn/{sha}")
                h.send_header("X-Repo-Commit", repo.commit)
                h.send_header("X-Linked-Etag", f'"{sha}"')
                h.send_header("X-Linked-Size", str(len(data)))
                h.send_header("ETag", f'"{git_sha1(data)}"')
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            return self._content(h, head, data, name, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_sha1(data)}"'})
        return self._error(h, 404, "NotFound")

    def _api(self, h: BaseHTTPRequestHandler, rest: str) -> None:
        if "/tree/" in rest:  # the file list snapshot_download asks for
            repo_id, _, rev = rest.partition("/tree/")
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 401, "RepoNotFound")
            if rev.split("/")[0] not in ("main", repo.commit):
                return self._error(h, 404, "RevisionNotFound")
            entries = []
            for path in sorted(repo.files):
                sib = repo.sibling(path)
                entry = {"type": "file", "path": path, "size": sib["size"], "oid": sib["blobId"]}
                if "lfs" in sib:
                    entry["lfs"] = {"oid": sib["lfs"]["sha256"], "size": sib["lfs"]["size"], "pointerSize": 134}
                entries.append(entry)
            return self._json(h, entries)
        repo_id, _, rev = rest.partition("/revision/")
        repo = self.repos.get(repo_id.rstrip("/"))
        if repo is None:
            return self._error(h, 401, "RepoNotFound")
        if rev and rev not in ("main", repo.commit):
            return self._error(h, 404, "RevisionNotFound")
        self._json(h, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "private": False,
                       "siblings": [repo.sibling(p) for p in sorted(repo.files)]})

    def _json(self, h: BaseHTTPRequestHandler, data) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _content(self, h: BaseHTTPRequestHandler, head: bool, data: bytes, name: str, extra: dict[str, str]) -> None:
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0] or 0)
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        for key, value in extra.items():
            h.send_header(key, value)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if head:
            return
        body = data[start:]
        with self._lock:
            drop = self.drop_once.pop(name, None)
        if drop is not None:
            body = body[:drop]
        try:
            for i in range(0, len(body), CHUNK):
                if self.delay:
                    time.sleep(self.delay)
                h.wfile.write(body[i:i + CHUNK])
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if drop is not None:  # the connection dies mid-file
            h.close_connection = True
            try:
                h.connection.shutdown(2)
            except OSError:
                pass

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
