"""A small in-memory server speaking the part of the Hugging Face Hub HTTP API that a push and a load use.

Enough for the real `huggingface_hub` client (pointed at it with `HF_ENDPOINT`) to create a repo, upload a
folder (`preupload` answers "regular" for every file, so contents travel base64-inlined in the NDJSON commit;
no LFS or Xet storage is involved), and for `from_pretrained` to resolve and download files.

Endpoints:
    POST /api/repos/create                              create (409 if it exists), public or private
    GET  /api/whoami-v2                                 a fake user
    POST /api/validate-yaml                             README metadata check (YAML must parse)
    POST /api/models/{repo}/preupload/{revision}        upload mode of each file: "regular"
    POST /api/models/{repo}/commit/{revision}           apply an NDJSON commit
    GET  /api/models/{repo}[/revision/{revision}]       repo info (sha, siblings)
    GET  /api/models/{repo}/tree/{revision}[/{path}]    file listing
    HEAD/GET /{repo}/resolve/{revision}/{path}          file metadata / content

Binds 127.0.0.1 only, on an ephemeral port; `HubServer` is a context manager that stops the server on exit and
never lives longer than `max_lifetime_s` (a watchdog shuts it down).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class _Repo:
    def __init__(self, repo_id: str, private: bool = False):
        self.repo_id, self.private = repo_id, private
        self.files: dict[str, bytes] = {}
        self.commits: list[dict] = []  # oldest first: {"oid", "summary", "files": snapshot}
        self.lock = threading.Lock()

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision in ("main", "refs/heads/main"):
            return self.head, self.files
        for commit in self.commits:
            if commit["oid"] == revision:
                return commit["oid"], commit["files"]
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - quiet; requests are recorded in server.requests
        pass

    # --- plumbing --------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str | None, message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _route(self):
        path = unquote(urlsplit(self.path).path)
        self.server.requests.append((self.command, path))
        try:
            self._dispatch(path)
        except Exception as error:  # noqa: BLE001 - report to the client and the test
            self.server.errors.append(f"{self.command} {path}: {error!r}")
            self._error(500, None, f"mock hub error: {error!r}")

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _route

    # --- endpoints -------------------------------------------------------------------------------

    def _dispatch(self, path: str):
        base = self.server.endpoint
        if self.command == "POST" and path == "/api/repos/create":
            payload = json.loads(self._body() or b"{}")
            repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
            with self.server.lock:
                exists = repo_id in self.server.repos
                if not exists:
                    private = payload.get("visibility") == "private" or bool(payload.get("private"))
                    self.server.repos[repo_id] = _Repo(repo_id, private=private)
            status = 409 if exists else 200
            return self._json(status, {"url": f"{base}/{repo_id}", "name": repo_id, "id": repo_id,
                                       **({"error": "You already created this model repo"} if exists else {})})
        if path == "/api/whoami-v2":
            return self._json(200, {"type": "user", "name": "tester", "fullname": "Tester", "orgs": [],
                                    "auth": {"accessToken": {"role": "write", "displayName": "fake"}}})
        if self.command == "POST" and path == "/api/validate-yaml":
            import yaml

            content = json.loads(self._body() or b"{}").get("content", "")
            match = re.match(r"^---\n(.*?)\n---", content, flags=re.S)
            try:
                metadata = yaml.safe_load(match.group(1)) if match else {}
                if metadata is not None and not isinstance(metadata, dict):
                    raise ValueError("metadata is not a mapping")
            except Exception as error:  # noqa: BLE001
                return self._json(400, {"errors": [{"message": str(error)}], "warnings": []})
            return self._json(200, {"errors": [], "warnings": []})

        match = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(.*))?$", path)
        if match:
            return self._api_repo(match.group(1), match.group(2) or "")
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match and self.command in ("GET", "HEAD"):
            return self._resolve(*match.groups())
        self.server.unhandled.append(f"{self.command} {path}")
        return self._error(404, None, f"mock hub: no route for {self.command} {path}")

    def _repo(self, repo_id: str) -> _Repo | None:
        with self.server.lock:
            return self.server.repos.get(repo_id)

    def _api_repo(self, repo_id: str, rest: str):
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if self.command == "POST" and rest.startswith("preupload/"):
            files = json.loads(self._body() or b"{}").get("files", [])
            return self._json(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
            ]})
        if self.command == "POST" and rest.startswith("commit/"):
            return self._commit(repo, unquote(rest[len("commit/"):]))
        if self.command == "GET" and (rest == "" or rest.startswith("revision/")):
            revision = rest[len("revision/"):] if rest else "main"
            found = repo.snapshot(revision)
            if found is None:
                return self._error(404, "RevisionNotFound", f"Revision {revision} not found")
            sha, files = found
            return self._json(200, {
                "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "disabled": False, "gated": False,
                "tags": [], "downloads": 0, "likes": 0, "library_name": "transformers",
                "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())],
            })
        if self.command == "GET" and rest.startswith("tree/"):
            parts = rest[len("tree/"):].split("/", 1)
            found = repo.snapshot(parts[0])
            if found is None:
                return self._error(404, "RevisionNotFound", f"Revision {parts[0]} not found")
            prefix = (parts[1].rstrip("/") + "/") if len(parts) > 1 and parts[1] else ""
            entries, folders = [], set()
            for name, data in sorted(found[1].items()):
                if not name.startswith(prefix):
                    continue
                rest_name = name[len(prefix):]
                if "/" in rest_name:
                    folders.add(prefix + rest_name.split("/", 1)[0])
                    continue
                entries.append({"type": "file", "path": name, "size": len(data),
                                "oid": hashlib.sha1(data).hexdigest()})
            entries = [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)] + entries
            return self._json(200, entries)
        self.server.unhandled.append(f"{self.command} /api/models/{repo_id}/{rest}")
        return self._error(404, None, f"mock hub: no route for {self.command} {rest}")

    def _commit(self, repo: _Repo, revision: str):
        if revision not in ("main", "refs/heads/main"):
            return self._error(404, "RevisionNotFound", f"Only the main branch exists, not {revision}")
        lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        with repo.lock:
            files = dict(repo.files)
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {name: data for name, data in files.items() if not name.startswith(folder)}
                elif key == "lfsFile":
                    raise ValueError("this mock hub only accepts regular (inline) files, got an LFS pointer")
            digest = hashlib.sha1(repo.head.encode() + json.dumps(header).encode())
            for name, data in sorted(files.items()):
                digest.update(name.encode() + hashlib.sha1(data).digest())
            oid = digest.hexdigest()
            repo.commits.append({"oid": oid, "summary": header.get("summary", ""), "files": files})
            repo.files = files
        return self._json(200, {"commitUrl": f"{self.server.endpoint}/{repo.repo_id}/commit/{oid}",
                                "commitOid": oid, "pullRequestUrl": None})

    def _resolve(self, repo_id: str, revision: str, filename: str):
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        found = repo.snapshot(revision)
        if found is None:
            return self._error(404, "RevisionNotFound", f"Revision {revision} not found")
        sha, files = found
        if filename not in files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist at {revision}",)
        data = files[filename]
        self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                               "Accept-Ranges": "bytes"}, content_type="application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, _Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[str] = []
        self.errors: list[str] = []


class HubServer:
    """`with HubServer() as hub: ... hub.endpoint ...`: serves on a daemon thread, stopped on exit or after
    `max_lifetime_s`, whichever comes first."""

    def __init__(self, max_lifetime_s: float = 300.0):
        self.max_lifetime_s = max_lifetime_s
        self._server: _Server | None = None
        self._stopped = threading.Event()

    @property
    def endpoint(self) -> str:
        return self._server.endpoint

    @property
    def server(self) -> _Server:
        return self._server

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self._server.repos[repo_id].files)

    def is_private(self, repo_id: str) -> bool:
        return self._server.repos[repo_id].private

    def start(self) -> "HubServer":
        self._server = _Server()
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def _watchdog(self):
        if not self._stopped.wait(self.max_lifetime_s):
            self.stop()

    def stop(self) -> None:
        if self._server is not None and not self._stopped.is_set():
            self._stopped.set()
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # manual use: python tests/hub_server.py  (Ctrl-C to stop)
    with HubServer(max_lifetime_s=3600) as hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
