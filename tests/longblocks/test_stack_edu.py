"""Stack-Edu end to end: a Hub-shaped `HuggingFaceTB/stack-edu` built locally (one config per
programming language, rows of blob ids and metadata, no text) and its file contents served by a
real S3-compatible server on 127.0.0.1 (moto in server mode, bucket `softwareheritage`, gzip
objects under `content/`), reached through boto3 exactly as against Software Heritage. In front
of it a forwarding proxy (TEST DOUBLE) answers one blob's first GET with a 503, so botocore's
retry is exercised; one blob id has no object. Then the same through `local:PATH`."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import random_text
from longblocks.config import SourceConfig
from longblocks.pipeline import run
from longblocks.sources import resolve_source

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

LANGUAGES = {"python": "Python", "go": "Go"}


def stack_edu_hub(root: Path, blobs: dict[str, str], missing: str) -> dict[str, list[dict]]:
    """The Hub layout: <Config>/train-*.parquet with Stack-Edu's metadata columns, no text."""
    rows: dict[str, list[dict]] = {}
    rng = random.Random(0)
    ids = sorted(blobs) + [missing]
    for i, blob_id in enumerate(ids):
        lang = "python" if i % 2 == 0 else "go"
        rows.setdefault(lang, []).append({
            "blob_id": blob_id, "repo_name": f"org/repo{i}", "path": f"src/file{i}.{'py' if lang == 'python' else 'go'}",
            "length_bytes": len(blobs.get(blob_id, "")), "score": rng.uniform(3, 5), "int_score": 4,
            "language": LANGUAGES[lang], "src_encoding": "UTF-8", "detected_licenses": ["MIT"], "license_type": "permissive"})
    configs = []
    for lang, config in LANGUAGES.items():
        (root / config).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows[lang]), root / config / "train-00000-of-00001.parquet")
        configs.append(f"- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}/train-*")
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return rows


class FlakyProxy:
    """TEST DOUBLE in front of the real S3 server: forwards every request, except that the first GET
    of each key in `fail_once` gets a 503 SlowDown; counts the GETs per key."""

    def __init__(self, upstream: str, fail_once: set[str]) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response

        from openai_double import LocalServer

        self.upstream, self.fail_once, self.gets = upstream, set(fail_once), Counter()

        async def forward(request: Request) -> Response:
            path = request.url.path
            if request.method == "GET":
                self.gets[path] += 1
                if path.rsplit("/", 1)[-1] in self.fail_once:
                    self.fail_once.discard(path.rsplit("/", 1)[-1])
                    return Response("<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>",
                                    status_code=503, media_type="application/xml")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            target = path + (f"?{request.url.query}" if request.url.query else "")
            status, up_headers, content = await asyncio.to_thread(
                self._forward, request.method, target, headers, await request.body())
            keep = {k: v for k, v in up_headers if k.lower() not in ("content-length", "transfer-encoding",
                                                                     "content-encoding", "connection")}
            return Response(content, status_code=status, headers=keep)

        self.server = LocalServer()
        app = Starlette()
        app.add_route("/{path:path}", forward, methods=["GET", "HEAD", "PUT", "POST", "DELETE"])
        self.server.serve(app)

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        host = self.upstream.removeprefix("http://")
        connection = http.client.HTTPConnection(host, timeout=30)
        try:
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def __enter__(self) -> "FlakyProxy":
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from openai_double import _free_port

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_stack_edu_contents_come_from_s3_with_a_retry_a_missing_blob_and_a_cache(
        s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    blobs = {f"{i:040x}": f"def f{i}():\n    return {i}\n# {random_text(rng, 20)}\n" for i in range(1, 9)}
    missing = "f" * 40
    rows = stack_edu_hub(tmp_path / "hub", blobs, missing)
    bucket = boto3.client("s3", endpoint_url=s3)
    bucket.create_bucket(Bucket="softwareheritage")
    for blob_id, text in blobs.items():  # as Software Heritage stores them: gzip
        bucket.put_object(Bucket="softwareheritage", Key=f"content/{blob_id}", Body=gzip.compress(text.encode()),
                          ACL="public-read")  # the Software Heritage bucket is public: we read unsigned
    flaky = sorted(blobs)[2]
    monkeypatch.setenv("LONGBLOCKS_CACHE", str(tmp_path / "cache"))
    with FlakyProxy(s3, {flaky}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        source = resolve_source("stack-edu", hub_id=str(tmp_path / "hub"), shuffle_buffer=4, contents_concurrency=3)
        manifest = run("sample", SourceConfig(quotas={"python": 10, "go": 10}, seed=0), [], tmp_path / "out", source=source)
        first_gets = sum(proxy.gets.values())
        again = resolve_source("stack-edu", hub_id=str(tmp_path / "hub"), shuffle_buffer=4)
        run("sample", SourceConfig(quotas={"python": 10, "go": 10}, seed=0), [], tmp_path / "again", source=again)
        assert sum(proxy.gets.values()) == first_gets + 1  # cached blobs are not fetched again: only the missing one
    docs = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert sorted(d["text"] for d in docs) == sorted(blobs.values())
    assert Counter(d["language"] for d in docs) == {"python": len(rows["python"]) - 1, "go": len(rows["go"])}
    assert proxy.gets[f"/softwareheritage/content/{flaky}"] == 2  # the 503, then botocore's retry
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert [(r["reason"], missing in r["detail"]) for r in rejected] == [("blob_missing", True)]
    assert manifest["rejected"] == {"blob_missing": 1}

    # blobs already downloaded: local:PATH, no S3 at all
    (tmp_path / "blobs").mkdir()
    for blob_id, text in blobs.items():
        (tmp_path / "blobs" / f"{blob_id}.gz").write_bytes(gzip.compress(text.encode()))
    local = resolve_source("stack-edu", hub_id=str(tmp_path / "hub"), shuffle_buffer=4, contents=f"local:{tmp_path / 'blobs'}")
    run("sample", SourceConfig(quotas={"python": 10, "go": 10}, seed=0), [], tmp_path / "local", source=local)
    assert sorted(d["text"] for d in pq.read_table(tmp_path / "local" / "data").to_pylist()) == sorted(blobs.values())


def test_stack_edu_contents_option_is_checked() -> None:
    from longblocks.errors import LongBlocksError
    from longblocks.swh import ContentFetcher

    with pytest.raises(LongBlocksError, match="s3://BUCKET"):
        ContentFetcher("ftp://x")
    with pytest.raises(LongBlocksError, match="not a folder"):
        ContentFetcher("local:/nonexistent/blobs")
