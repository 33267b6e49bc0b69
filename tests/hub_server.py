"""A small Hugging Face Hub-compatible HTTP server for tests (not part of the package).

The real ``huggingface_hub`` and ``transformers`` clients push to it and load from it on 127.0.0.1. It
speaks just the part of the Hub API those clients use for model repos: tokens and private repos,
repo creation, branches, preupload (every file "regular": no LFS, no Xet), one-commit uploads,
repo info / tree / commit listing, and file resolution with the ETag / X-Repo-Commit headers. Commits
are applied all at once: blobs first, then the branch moves, so a broken upload changes nothing.

``huggingface_hub`` reads its endpoint when first imported, so tests call ``configure_clients()``
before anything imports it; the port is reserved then and served only while ``serving()`` runs.
"""

import atexit
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclasses.dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, str]  # path -> blob oid
    title: str
    message: str
    author: str
    date: str


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str]  # branch -> commit oid
    commits: dict[str, Commit]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)

    def history(self, commit: Commit) -> list[Commit]:
        chain = [commit]
        while chain[-1].parent is not None:
            chain.append(self.commits[chain[-1].parent])
        return chain


class HubError(Exception):
    """An error answer: status, X-Error-Code and a message (sent as header and JSON body, like the Hub)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, body=None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body or {}


class HubServer:
    """Repos live in memory, file contents in a temp dir. ``users`` maps user name to token."""

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)
        self.tokens = {token: user for user, token in users.items()}
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.root = Path(tempfile.mkdtemp(prefix="hub-server-"))
        atexit.register(shutil.rmtree, self.root, True)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir()
        self.commit_faults: list[str | int] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self._httpd.server_bind()  # reserves the port; connections are refused until serving()
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def configure_clients(self) -> None:
        """Point huggingface_hub at this server, with an empty cache and no token (before it is imported)."""
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.pop(name, None)
        os.environ.update(
            HF_ENDPOINT=self.endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(self.root / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1"
        )

    @contextlib.contextmanager
    def serving(self):
        self._httpd.server_activate()
        thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join()

    def token(self, user: str) -> str:
        return self.users[user]

    def fail_next_commit(self, fault: str | int) -> None:
        """Make the next commit fail: ``"disconnect"`` drops the connection halfway through the upload,
        an int status (e.g. 422) rejects it after reading it."""
        self.commit_faults.append(fault)

    # --- storage ---------------------------------------------------------------------------------

    def read_blob(self, oid: str) -> bytes:
        return (self.blob_dir / oid).read_bytes()

    def _write_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        path = self.blob_dir / oid
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.blob_dir, prefix=".incoming-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, path)
        return oid

    def _new_commit(self, repo: Repo, parent: Commit | None, files: dict, title: str, message: str, author: str) -> Commit:
        seed = json.dumps([repo.repo_id, parent.oid if parent else None, sorted(files.items()), title, len(repo.commits)])
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(), parent=parent.oid if parent else None, files=files,
            title=title, message=message, author=author,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
        )
        repo.commits[commit.oid] = commit
        return commit

    # --- access ----------------------------------------------------------------------------------

    def user_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, INVALID_TOKEN)
        return self.tokens[token]

    def readable_repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            # As the Hub: a repo you may not see does not exist (401 without a token, 404 with one).
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def writable_repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.readable_repo(repo_id, user)
        if user != repo_id.split("/")[0]:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def commit_of(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # --- API -------------------------------------------------------------------------------------

    def create_repo(self, user: str | None, body: dict) -> tuple[int, dict]:
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo", "RepoNotFound")
        if body.get("type", "model") != "model":
            raise HubError(400, "This test server hosts model repos only")
        namespace = body.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace!r}")
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.endpoint}/{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", body={"url": url})
            repo = Repo(repo_id, body.get("visibility") == "private" or bool(body.get("private")), {}, {})
            files = {".gitattributes": self._write_blob(INITIAL_GITATTRIBUTES)}
            repo.branches["main"] = self._new_commit(repo, None, files, "initial commit", "", user).oid
            self.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id}

    def create_branch(self, user, repo_id: str, branch: str, body: dict) -> tuple[int, dict]:
        repo = self.writable_repo(repo_id, user)
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self.commit_of(repo, body.get("startingPoint") or "main").oid
        return 200, {}

    def repo_info(self, user, repo_id: str, revision: str) -> tuple[int, dict]:
        repo = self.readable_repo(repo_id, user)
        commit = self.commit_of(repo, revision)
        siblings = [
            {"rfilename": path, "size": (self.blob_dir / oid).stat().st_size, "blobId": oid}
            for path, oid in sorted(commit.files.items())
        ]
        return 200, {
            "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "gated": False, "disabled": False, "lastModified": commit.date,
            "createdAt": repo.history(commit)[-1].date, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings,
        }

    def tree(self, user, repo_id: str, revision: str, folder: str, recursive: bool) -> tuple[int, list]:
        repo = self.readable_repo(repo_id, user)
        commit = self.commit_of(repo, revision)
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries, folders = [], set()
        for path, oid in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if depth == 1 or recursive:
                    folders.add(prefix + "/".join(parts[:depth]))
            if len(parts) == 1 or recursive:
                entries.append({"type": "file", "oid": oid, "size": (self.blob_dir / oid).stat().st_size, "path": path})
        if prefix and not entries and not folders:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        entries += [{"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": 0, "path": name} for name in sorted(folders)]
        return 200, entries

    def list_commits(self, user, repo_id: str, revision: str) -> tuple[int, list]:
        repo = self.readable_repo(repo_id, user)
        return 200, [
            {"id": c.oid, "authors": [{"user": c.author}], "date": c.date, "title": c.title, "message": c.message}
            for c in repo.history(self.commit_of(repo, revision))
        ]

    def preupload(self, user, repo_id: str, revision: str, body: dict) -> tuple[int, dict]:
        commit = self.commit_of(self.writable_repo(repo_id, user), revision)
        return 200, {
            "files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(f["path"])}
                for f in body["files"]
            ],
            "commitOid": commit.oid,
        }

    def commit(self, user, repo_id: str, revision: str, lines: list[dict], params: dict) -> tuple[int, dict]:
        repo = self.writable_repo(repo_id, user)
        if params.get("create_pr"):
            raise HubError(400, "This test server does not support pull requests")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "A commit needs a header line with a summary")
        with self.lock:
            parent = repo.commits[repo.branches[revision]]
            if header.get("parentCommit") not in (None, parent.oid):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(parent.files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = self._write_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    files = {p: o for p, o in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                elif key != "header":
                    raise HubError(400, f"Unsupported commit operation {key!r}: this test server takes regular uploads only")
            commit = self._new_commit(repo, parent, files, header["summary"], header.get("description", ""), user)
            repo.branches[revision] = commit.oid
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{commit.oid}"}

    def resolve(self, user, repo_id: str, revision: str, path: str) -> tuple[bytes, dict]:
        commit = self.commit_of(self.readable_repo(repo_id, user), revision)
        oid = commit.files.get(path)
        if oid is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return self.read_blob(oid), {"X-Repo-Commit": commit.oid, "ETag": f'"{oid}"'}


def validate_card_yaml(content: str) -> tuple[int, dict]:
    match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---", content)
    try:
        metadata = yaml.safe_load(match.group(1)) if match else {}
    except yaml.YAMLError as error:
        return 400, {"errors": [{"message": f"Invalid YAML in README.md metadata: {error}"}], "warnings": []}
    if metadata is not None and not isinstance(metadata, dict):
        return 400, {"errors": [{"message": "README.md metadata must be a YAML mapping"}], "warnings": []}
    return 200, {"errors": [], "warnings": []}


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", "list_commits"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str):
        hub: HubServer = self.server.hub
        url = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(url.query).items()}
        route = next(
            ((name, match) for route_method, pattern, name in _ROUTES
             if route_method == ("GET" if method == "HEAD" else method) and (match := re.fullmatch(pattern, url.path))),
            None,
        )
        if route is not None and route[0] == "commit" and hub.commit_faults:
            return self._fail_commit(hub.commit_faults.pop(0))
        body = self._read_body()  # always read all of it, or the client sees a reset instead of our answer
        try:
            if route is None:
                raise HubError(404, f"{method} {url.path} is not part of this test Hub server's API")
            name, match = route
            args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
            self._answer(method, *self._call(hub, name, args, body, params))
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._answer(method, error.status, {**error.body, "error": error.message}, headers)

    def _call(self, hub: HubServer, name: str, args: dict, body: bytes, params: dict):
        user = hub.user_for(self.headers.get("Authorization"))
        repo, rev = args.get("repo"), args.get("rev", "main")
        if name == "whoami":
            if user is None:
                raise HubError(401, INVALID_TOKEN)
            return 200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token", "accessToken": {"role": "write"}}}
        if name == "validate_yaml":
            return validate_card_yaml(json.loads(body)["content"])
        if name == "create_repo":
            return hub.create_repo(user, json.loads(body))
        if name == "create_branch":
            return hub.create_branch(user, repo, rev, json.loads(body or b"{}"))
        if name == "repo_info":
            return hub.repo_info(user, repo, rev)
        if name == "tree":
            return hub.tree(user, repo, rev, args.get("path", ""), params.get("recursive", "").lower() in ("1", "true"))
        if name == "list_commits":
            return hub.list_commits(user, repo, rev)
        if name == "preupload":
            return hub.preupload(user, repo, rev, json.loads(body))
        if name == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            return hub.commit(user, repo, rev, lines, params)
        content, headers = hub.resolve(user, repo, rev, args["path"])
        return 200, content, headers

    def _fail_commit(self, fault):
        length = int(self.headers.get("Content-Length") or 0)
        if fault == "disconnect":
            self.rfile.read(length // 2)
            self.close_connection = True
            self.request.shutdown(socket.SHUT_RDWR)
            return
        self.rfile.read(length)
        self._answer("POST", fault, {"error": f"Commit rejected by the server ({fault})"}, {"X-Error-Message": "Commit rejected"})

    def _answer(self, method: str, status: int, payload, headers: dict | None = None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)
