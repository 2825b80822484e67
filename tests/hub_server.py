"""A Hugging Face Hub on loopback, just large enough for huggingface_hub to push and pull a model repo.

It speaks the routes the real Hub serves for `create_repo`, `upload_folder` (every file "regular":
base64 inside the commit, so neither LFS nor Xet is needed), `model_info`, `list_repo_tree` and
`hf_hub_download`, with the headers the client reads (X-Repo-Commit, ETag, X-Error-Code).
Write routes want a bearer token (or Basic credentials, which an HF_ENDPOINT of http://user:password@host makes
the client send); `fail_commits` makes the next N commits answer 503, `fail_preuploads` the next N preuploads 500
(a transient error huggingface_hub retries, logging the request's URL). Hostile modes:
`echo_authorization` makes errors quote the request's Authorization header (as some proxies do), and
`stall_seconds` holds every request that long before answering (a Hub that never answers).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml


def git_blob_oid(content: bytes) -> str:
    # what the Hub reports as a regular file's oid, and what huggingface_hub compares to skip unchanged files
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    """State shared by the request handlers: repos, every request seen, and the fault switch."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.tokens_seen: set[str] = set()
        self.fail_commits = 0
        self.fail_preuploads = 0
        self.echo_authorization = False
        self.stall_seconds = 0.0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: pytest shows hub.requests when a test fails
            pass

        # -- plumbing ---------------------------------------------------------------------------

        def _reply(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None, head=False):
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None, head=False):
            self._reply(status, {"error": message}, {"X-Error-Code": code} if code else None, head=head)

        def _hostile(self) -> bool:
            """Answer as a hostile or broken Hub would, if asked to; True if the request is dealt with."""
            if hub.stall_seconds:
                time.sleep(hub.stall_seconds)
            if hub.echo_authorization:
                self._error(400, "Bad request: could not validate header Authorization: "
                                 f"{self.headers.get('Authorization')}")
                return True
            return False

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            scheme, _, credential = auth.partition(" ")
            if scheme == "Basic" and credential:
                credential = base64.b64decode(credential).decode().partition(":")[2]
            elif scheme != "Bearer":
                credential = ""
            if not credential:
                self._error(401, "Invalid credentials in Authorization header")
                return False
            hub.tokens_seen.add(credential)
            return True

        def _repo(self, repo_id: str, head=False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self.headers.get("Authorization")):
                self._error(404, f"Repository not found: {repo_id}", "RepoNotFound", head=head)
                return None
            return repo

        def _route(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((method, path))
            if self._hostile():
                return
            parts = path.strip("/").split("/")
            with hub.lock:
                if method == "POST" and path == "/api/repos/create":
                    return self._create_repo()
                if method == "POST" and path == "/api/validate-yaml":
                    return self._validate_yaml()
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo_id, action, rest = "/".join(parts[2:4]), parts[4:5], parts[5:]
                    if method == "POST" and action == ["preupload"]:
                        return self._preupload(repo_id)
                    if method == "POST" and action == ["commit"]:
                        return self._commit(repo_id)
                    if method == "GET" and action == ["tree"]:
                        return self._tree(repo_id, "/".join(rest[1:]))
                    if method == "GET" and action in ([], ["revision"]):
                        return self._model_info(repo_id)
                if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), "/".join(parts[4:]), head=method == "HEAD")
            self._error(404, f"no route for {method} {path}", head=method == "HEAD")

        def do_GET(self):
            self._route("GET")

        def do_HEAD(self):
            self._route("HEAD")

        def do_POST(self):
            self._route("POST")

        # -- routes -----------------------------------------------------------------------------

        def _create_repo(self):
            if not self._authorised():
                return
            payload = json.loads(self._body())
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            url = {"url": f"{hub.url}/{repo_id}"}
            if repo_id in hub.repos:
                return self._reply(409, {"error": "You already created this model repo", **url})
            hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            self._reply(200, url)

        def _validate_yaml(self):
            content = json.loads(self._body())["content"]
            if not content.startswith("---\n"):
                return self._reply(200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
            try:
                metadata = yaml.safe_load(content.split("---\n")[1])
            except yaml.YAMLError as error:
                return self._error(400, f"Invalid YAML in README.md: {error}")
            if not isinstance(metadata, dict):
                return self._error(400, "YAML metadata must be a mapping")
            self._reply(200, {"errors": [], "warnings": []})

        def _preupload(self, repo_id: str):
            if not self._authorised() or (repo := self._repo(repo_id)) is None:
                return
            files = json.loads(self._body())["files"]
            if hub.fail_preuploads > 0:
                hub.fail_preuploads -= 1
                return self._reply(500, {"error": "Internal Error"}, {"Retry-After": "0"})
            answer = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(repo.files[f["path"]]) if f["path"] in repo.files else None,
                }
                for f in files
            ]
            self._reply(200, {"files": answer, "commitOid": repo.sha})

        def _commit(self, repo_id: str):
            if not self._authorised() or (repo := self._repo(repo_id)) is None:
                return
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if hub.fail_commits > 0:
                hub.fail_commits -= 1
                # Retry-After: 0 keeps huggingface_hub's backoff short in tests
                return self._reply(503, {"error": "Service Unavailable"}, {"Retry-After": "0"})
            if not lines or lines[0].get("key") != "header":
                return self._error(400, "commit payload must start with a header line")
            changed, deleted = {}, set()
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "deletedFile":
                    if value["path"] not in repo.files:
                        return self._error(404, f"Entry not found: {value['path']}", "EntryNotFound")
                    deleted.add(value["path"])
                    continue
                if line["key"] != "file" or value.get("encoding") != "base64":
                    return self._error(400, f"this test Hub only takes base64 files, not {line['key']}")
                changed[value["path"]] = base64.b64decode(value["content"])
            for path in deleted:  # all or nothing, as a git commit is
                del repo.files[path]
            repo.files.update(changed)
            sha = hashlib.sha1(f"{repo.sha}{sorted(changed)}{len(repo.commits)}".encode()).hexdigest()
            repo.commits.append(sha)
            self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

        def _tree(self, repo_id: str, prefix: str):
            if (repo := self._repo(repo_id)) is None:
                return
            entries = [
                {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
                for path, data in sorted(repo.files.items())
                if not prefix or path.startswith(prefix.rstrip("/") + "/")
            ]
            self._reply(200, entries)

        def _model_info(self, repo_id: str):
            if (repo := self._repo(repo_id)) is None:
                return
            siblings = [{"rfilename": path, "size": len(data)} for path, data in sorted(repo.files.items())]
            info = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": repo.private,
                    "library_name": "diffusers", "tags": [], "siblings": siblings}
            self._reply(200, info)

        def _resolve(self, repo_id: str, filename: str, head: bool):
            if (repo := self._repo(repo_id, head=head)) is None:
                return
            if filename not in repo.files:
                return self._error(404, f"Entry not found: {filename}", "EntryNotFound", head=head)
            data = repo.files[filename]
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{git_blob_oid(data)}"'}
            self._reply(200, data, headers, head=head)

    return Handler
