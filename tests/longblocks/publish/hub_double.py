"""TEST DOUBLE: a local stand-in for the parts of the Hugging Face Hub HTTP API that
`huggingface_hub`'s create_repo and create_commit use (repo creation, preupload, commit with
inline "regular" files and "lfsFile" pointers), on 127.0.0.1, and the git-LFS side: the batch API
(`{repo}.git/info/lfs/objects/batch`, basic transfer), the PUT of each object and its verify call.
As the Hub does, it answers `uploadMode: lfs` for parquet files and files of `lfs_threshold` bytes
or more, and no upload action for an object it already holds. It stores committed files in a
folder, answers the first commit with a 429, can refuse LFS uploads after `lfs_uploads_allowed`
of them (a push cut off part-way), and records every request so tests can check what was sent.
Xet, the Hub's newer transfer, is not emulated: tests set HF_HUB_DISABLE_XET=1."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openai_double import LocalServer


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubDouble(LocalServer):
    def __init__(self, storage: Path, *, fail_first_commit: int = 1, lfs_threshold: int = 10_000_000,
                 lfs_uploads_allowed: int | None = None) -> None:
        self.storage = storage
        self.repos: dict[str, dict[str, Any]] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.auth: set[str] = set()
        self.validated: list[str] = []
        self.last_oid = "0" * 40
        self.fail_first_commit = fail_first_commit
        self.lfs_threshold = lfs_threshold
        self.lfs_uploads_allowed = lfs_uploads_allowed
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.lfs_puts: list[str] = []  # the oid of every upload received
        self.lfs_accepted = 0
        self.lfs_verified: list[str] = []
        app = Starlette(routes=[
            Route("/api/repos/create", self.create, methods=["POST"]),
            Route("/api/datasets/{org}/{name}/preupload/{revision}", self.preupload, methods=["POST"]),
            Route("/api/datasets/{org}/{name}/commit/{revision}", self.commit, methods=["POST"]),
            Route("/api/validate-yaml", self.validate_yaml, methods=["POST"]),
            Route("/api/datasets/{org}/{name}/revision/{revision}", self.info, methods=["GET"]),
            Route("/datasets/{org}/{name}.git/info/lfs/objects/batch", self.lfs_batch, methods=["POST"]),
            Route("/lfs/upload/{oid}", self.lfs_put, methods=["PUT"]),
            Route("/lfs/verify", self.lfs_verify, methods=["POST"]),
        ])
        app.add_route("/{path:path}", self.unknown, methods=["GET", "POST", "PUT", "HEAD"])
        self.serve(app)

    def _seen(self, request: Request) -> None:
        self.requests.append((request.method, request.url.path))
        if "authorization" in request.headers:
            self.auth.add(request.headers["authorization"])

    async def unknown(self, request: Request) -> JSONResponse:
        self._seen(request)
        return JSONResponse({"error": "not emulated"}, status_code=404)

    async def validate_yaml(self, request: Request) -> JSONResponse:
        """Front matter must parse as YAML and as huggingface_hub's DatasetCardData, with the keys
        the Hub's dataset viewer and search use."""
        import yaml
        from huggingface_hub import DatasetCardData

        self._seen(request)
        body = await request.json()
        self.validated.append(body["content"])
        try:
            meta = yaml.safe_load(body["content"].split("---")[1])
            DatasetCardData(**meta)
            missing = [k for k in ("license", "configs", "task_categories", "size_categories") if k not in meta]
            if missing:
                raise ValueError(f"missing {missing}")
        except Exception as exc:
            return JSONResponse({"errors": [{"message": str(exc)}]}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    async def info(self, request: Request) -> JSONResponse:
        self._seen(request)
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        root = self.storage / repo
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        return JSONResponse({"_id": repo, "id": repo, "sha": self.last_oid, "private": self.repos[repo]["private"],
                             "siblings": [{"rfilename": f} for f in files]})

    async def create(self, request: Request) -> JSONResponse:
        self._seen(request)
        body = await request.json()
        repo = f"{body.get('organization')}/{body['name']}"
        if repo in self.repos:
            return JSONResponse({"error": "You already created this dataset repo",
                                 "url": f"{self.endpoint}/datasets/{repo}"}, status_code=409)
        self.repos[repo] = {"private": body.get("visibility") == "private" or bool(body.get("private")),
                            "type": body.get("type")}
        return JSONResponse({"url": f"{self.endpoint}/datasets/{repo}", "name": repo})

    async def preupload(self, request: Request) -> JSONResponse:
        self._seen(request)
        body = await request.json()
        root = self.storage / request.path_params["org"] / request.path_params["name"]
        files = []
        for f in body["files"]:
            stored = root / f["path"]
            lfs = f["path"].endswith(".parquet") or f["size"] >= self.lfs_threshold
            oid = None
            if stored.exists():  # the Hub compares the content's sha256 for LFS files, the git blob sha otherwise
                data = stored.read_bytes()
                oid = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha(data)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return JSONResponse({"files": files})

    async def lfs_batch(self, request: Request) -> JSONResponse:
        self._seen(request)
        body = await request.json()
        assert body["operation"] == "upload" and body["hash_algo"] == "sha256", body
        objects = []
        for obj in body["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:  # no "actions": the object is already stored
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs/upload/{obj['oid']}"},
                                    "verify": {"href": f"{self.endpoint}/lfs/verify"}}
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    async def lfs_put(self, request: Request) -> JSONResponse:
        self._seen(request)
        # counted before the body is awaited, so concurrent uploads cannot both pass the check
        if self.lfs_uploads_allowed is not None and self.lfs_accepted >= self.lfs_uploads_allowed:
            return JSONResponse({"error": "upload refused by the test"}, status_code=403)
        self.lfs_accepted += 1
        data = await request.body()
        oid = request.path_params["oid"]
        if hashlib.sha256(data).hexdigest() != oid:
            return JSONResponse({"error": "sha256 mismatch"}, status_code=400)
        self.lfs_puts.append(oid)
        self.lfs_objects[oid] = data
        return JSONResponse({})

    async def lfs_verify(self, request: Request) -> JSONResponse:
        self._seen(request)
        body = await request.json()
        if body["oid"] not in self.lfs_objects or len(self.lfs_objects[body["oid"]]) != body["size"]:
            return JSONResponse({"error": "object not found"}, status_code=404)
        self.lfs_verified.append(body["oid"])
        return JSONResponse({})

    async def commit(self, request: Request) -> JSONResponse:
        self._seen(request)
        if self.fail_first_commit > 0:
            self.fail_first_commit -= 1
            return JSONResponse({"error": "rate limited"}, status_code=429, headers={"retry-after": "0"})
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        header = next(l["value"] for l in lines if l["key"] == "header")
        root = self.storage / request.path_params["org"] / request.path_params["name"]
        written = []
        missing = [l["value"]["oid"] for l in lines if l["key"] == "lfsFile" and l["value"]["oid"] not in self.lfs_objects]
        if missing:
            return JSONResponse({"error": f"LFS objects never uploaded: {missing}"}, status_code=422)
        for line in lines:
            if line["key"] not in ("file", "lfsFile"):
                continue
            value = line["value"]
            target = root / value["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(value["content"]) if line["key"] == "file" else self.lfs_objects[value["oid"]])
            written.append(value["path"])
        self.commits.append({"summary": header["summary"], "files": written})
        oid = self.last_oid = hashlib.sha1(json.dumps(self.commits).encode()).hexdigest()
        return JSONResponse({"commitUrl": f"{self.endpoint}/datasets/{root.parent.name}/{root.name}/commit/{oid}",
                             "commitOid": oid, "success": True})
