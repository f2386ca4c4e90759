"""A local stand-in for the Hugging Face Hub's upload API, answering the requests huggingface_hub 2.4.0 makes for
``whoami``, ``create_repo``, ``create_branch``, ``repo_info`` and ``create_commit`` on its LFS path (found by reading
hf_api.py, _commit_api.py and lfs.py in the environment):

    GET  /api/whoami-v2                                   who the token belongs to, and its role
    POST /api/repos/create                                {"name", "organization", "visibility", "type"}
    GET  /api/models/{repo}[/revision/{rev}]              repo info: id, private, sha, siblings
    POST /api/models/{repo}/branch/{branch}               a branch from main
    POST /api/validate-yaml                               the README.md metadata checked before any upload
    POST /api/models/{repo}/preupload/{rev}               each file: "regular" or "lfs", and its oid if present
    POST /{repo}.git/info/lfs/objects/batch               LFS batch: an upload action per missing object, none for
                                                          an object the server has (so a rerun skips it)
    PUT  /lfs-upload/{repo}/{oid}                         the object's bytes (the href of the upload action)
    POST /lfs-verify/{repo}                               the verify action: {"oid", "size"}
    POST /api/models/{repo}/commit/{rev}                  NDJSON: header, then "file" (base64) and "lfsFile" lines

It keeps what arrived (every commit's files, every LFS object), records each request with its Authorization header,
and fails on demand (``fail_commits``, ``fail_lfs_puts_after``) so tests can interrupt an upload. It speaks plain
LFS only: it offers no Xet storage, so the client must run with ``HF_HUB_DISABLE_XET=1`` (huggingface_hub 2.4.0
uploads through Xet whenever hf_xet is installed, whatever the server answers).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".zip")
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    snapshots: dict[str, dict[str, tuple[str, bytes]]] = field(default_factory=dict)  # oid -> path -> (mode, bytes)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content

    def files(self, revision: str = "main") -> dict[str, bytes]:
        return {path: content for path, (_, content) in self.snapshots[self.branches[revision]].items()}


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


class HubState:
    """What the server holds and how it misbehaves; tests read and set it directly."""

    def __init__(self) -> None:
        self.tokens = {"hf_test_write_token": ("alice", "write"), "hf_test_read_token": ("alice", "read")}
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.create_payloads: list[dict] = []
        self.lfs_puts: list[str] = []  # the oid of every PUT that stored an object
        self.fail_commits = 0  # answer this many commits with a 500 first
        self.fail_lfs_puts_after: int | None = None  # PUTs after this many stored ones are refused (403)
        self.commits = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base_url: str

    def log_message(self, format, *args):  # noqa: A002 - the server's own access log stays off the test output
        pass

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: dict | list | None = None, headers: dict | None = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _user(self) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization") or ""
        return self.state.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def _repo(self, repo_id: str, write: bool = True) -> Repo | None:
        """The repo, or None after answering why not (401 no token, 404 unknown, 403 not the caller's)."""
        user = self._user()
        if user is None:
            self._error(401, "Invalid credentials in Authorization header")
            return None
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and repo_id.split("/")[0] != user[0]):
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        if write and (repo_id.split("/")[0] != user[0] or user[1] != "write"):
            self._error(403, "You don't have the rights to write to this repo")
            return None
        return repo

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._body() if method in ("POST", "PUT") else b""
        with self.state.lock:
            self.state.requests.append(Request(method, path, self.headers.get("Authorization")))
        for pattern, route_method, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                with self.state.lock:
                    handler(self, body, **{k: unquote(v) for k, v in match.groupdict().items()})
                return
        self._error(404, f"no route for {method} {path}")

    def do_GET(self):  # noqa: N802 - http.server's names
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    # -- the API --------------------------------------------------------------------------------------------------
    def whoami(self, body: bytes) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": user[0], "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": user[1]}}})

    def create_repo(self, body: bytes) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        payload = json.loads(body)
        self.state.create_payloads.append(payload)
        repo_id = f"{payload.get('organization') or user[0]}/{payload['name']}"
        url = f"{self.base_url}/{repo_id}"
        if repo_id in self.state.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        if repo_id.split("/")[0] != user[0] or user[1] != "write":
            return self._error(403, f"You don't have the rights to create a model under the namespace "
                               f"\"{repo_id.split('/')[0]}\"")
        repo = Repo(private=payload.get("visibility") == "private")
        first = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
        repo.snapshots[first] = {".gitattributes": ("regular", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")}
        repo.branches["main"] = first
        self.state.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, body: bytes, repo: str, revision: str = "main") -> None:
        found = self._repo(repo, write=False)
        if found is None:
            return
        if revision not in found.branches:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        sha = found.branches[revision]
        self._send(200, {"id": repo, "private": found.private, "sha": sha,
                         "siblings": [{"rfilename": p} for p in found.snapshots[sha]]})

    def create_branch(self, body: bytes, repo: str, branch: str) -> None:
        found = self._repo(repo)
        if found is None:
            return
        if branch in found.branches:
            return self._error(409, "Reference already exists")
        found.branches[branch] = found.branches["main"]
        self._send(200, {})

    def validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        if match is None:
            return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []})
        errors = [] if isinstance(metadata, dict) else [{"message": "metadata must be a mapping"}]
        if isinstance(metadata, dict) and not isinstance(metadata.get("tags", []), list):
            errors.append({"message": "tags must be a list"})
        self._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def preupload(self, body: bytes, repo: str, revision: str) -> None:
        found = self._repo(repo)
        if found is None:
            return
        if revision not in found.branches:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        present = found.snapshots[found.branches[revision]]
        answers = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] > 10 * 2**20 or b"\0" in sample
            oid = None
            if item["path"] in present:
                mode, content = present[item["path"]]
                oid = hashlib.sha256(content).hexdigest() if mode == "lfs" else git_blob_sha1(content)
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": oid})
        self._send(200, {"files": answers, "commitOid": found.branches[revision]})

    def lfs_batch(self, body: bytes, repo: str) -> None:
        found = self._repo(repo)
        if found is None:
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in found.lfs:  # an object the server has gets no actions: the client skips it
                answer["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{repo}/{obj['oid']}"},
                                     "verify": {"href": f"{self.base_url}/lfs-verify/{repo}"}}
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, body: bytes, repo: str, oid: str) -> None:
        found = self.state.repos.get(repo)
        if found is None:
            return self._error(404, "no such repo")
        limit = self.state.fail_lfs_puts_after
        if limit is not None and len(self.state.lfs_puts) >= limit:
            return self._error(403, "Request has expired (the test server refuses this upload)")
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "the uploaded bytes do not match the oid")
        found.lfs[oid] = body
        self.state.lfs_puts.append(oid)
        self._send(200, {})

    def lfs_verify(self, body: bytes, repo: str) -> None:
        found = self._repo(repo)
        if found is None:
            return
        obj = json.loads(body)
        if obj["oid"] not in found.lfs or len(found.lfs[obj["oid"]]) != obj["size"]:
            return self._error(404, "object not uploaded")
        self._send(200, {})

    def commit(self, body: bytes, repo: str, revision: str) -> None:
        found = self._repo(repo)
        if found is None:
            return
        if self.state.fail_commits > 0:
            self.state.fail_commits -= 1
            return self._error(500, "Internal Error - the test server fails this commit")
        if revision not in found.branches:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        snapshot = dict(found.snapshots[found.branches[revision]])
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                snapshot[value["path"]] = ("regular", base64.b64decode(value["content"]))
            elif line["key"] == "lfsFile":
                if value["oid"] not in found.lfs:
                    return self._error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                snapshot[value["path"]] = ("lfs", found.lfs[value["oid"]])
            else:
                return self._error(400, f"unexpected commit operation {line['key']}")
        oid = hashlib.sha1(f"{found.branches[revision]} {body!r}".encode()).hexdigest()
        found.snapshots[oid] = snapshot
        found.branches[revision] = oid
        self.state.commits += 1
        self._send(200, {"commitUrl": f"{self.base_url}/{repo}/commit/{oid}", "commitOid": oid,
                         "success": True})


ROUTES = [
    (r"/api/whoami-v2", "GET", _Handler.whoami),
    (r"/api/repos/create", "POST", _Handler.create_repo),
    (r"/api/validate-yaml", "POST", _Handler.validate_yaml),
    (rf"/api/models/{REPO}", "GET", _Handler.repo_info),
    (rf"/api/models/{REPO}/revision/(?P<revision>[^/]+)", "GET", _Handler.repo_info),
    (rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", "POST", _Handler.create_branch),
    (rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", "POST", _Handler.preupload),
    (rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", "POST", _Handler.commit),
    (rf"/{REPO}\.git/info/lfs/objects/batch", "POST", _Handler.lfs_batch),
    (rf"/lfs-upload/{REPO}/(?P<oid>[0-9a-f]{{64}})", "PUT", _Handler.lfs_upload),
    (rf"/lfs-verify/{REPO}", "POST", _Handler.lfs_verify),
]


class HubServer:
    """The server on 127.0.0.1 (a free port), serving from a thread until :meth:`close`."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        handler.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
