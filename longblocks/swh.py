"""Stack-Edu's file contents. The Hub release of `HuggingFaceTB/stack-edu` lists blob ids, not
text; its card fetches each file from the Software Heritage S3 bucket (`s3://softwareheritage/
content/<blob_id>`, gzip) with `boto3`. We do the same, anonymously (unsigned requests), with
bounded concurrency, botocore's retries on throttling and 5xx, and an on-disk cache so that a
killed and restarted run fetches nothing twice. `local:PATH` reads blobs already downloaded
(`PATH/<blob_id>` or `PATH/<blob_id>.gz`, optionally under `content/`). The endpoint follows
boto3's own settings (`AWS_ENDPOINT_URL_S3` for a mirror or an S3-compatible server).
Must not decide what a document is: a missing or unreadable blob is reported, not skipped.
"""

from __future__ import annotations

import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longblocks.errors import LongBlocksError

BUCKET = "softwareheritage"


@dataclass(frozen=True)
class Fetched:
    """A blob's text, or why there is none (`reason`: blob_missing | fetch_failed)."""

    text: str | None
    reason: str = ""
    detail: str = ""


def default_cache() -> Path:
    root = os.environ.get("LONGBLOCKS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "longblocks")
    return Path(root).expanduser() / "stack-edu-contents"


def _decode(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="ignore")  # as the Stack-Edu card decodes


class ContentFetcher:
    """`fetch(blob_ids)` -> {blob_id: Fetched}, from `s3` (the Software Heritage bucket, or
    `s3://BUCKET`) or `local:PATH`; S3 results are cached under `cache` (None: no cache)."""

    def __init__(self, where: str = "s3", *, cache: Path | None = None, concurrency: int = 16,
                 max_attempts: int = 8, timeout: float = 60.0) -> None:
        self.cache = cache
        self.local: Path | None = None
        self.bucket = BUCKET
        self.concurrency = max(1, concurrency)
        if where.startswith("local:"):
            self.local = Path(where[len("local:") :]).expanduser()
            if not self.local.is_dir():
                raise LongBlocksError(f"--stack-edu-contents: {self.local} is not a folder")
            return
        if where.startswith("s3://"):
            self.bucket = where[len("s3://") :].strip("/") or BUCKET
        elif where != "s3":
            raise LongBlocksError(f"stack-edu contents must be 's3', 's3://BUCKET' or 'local:PATH', got {where!r}")
        try:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config
        except ImportError:
            raise LongBlocksError("Stack-Edu contents come from S3 with boto3: pip install 'longblocks[stack-edu]', "
                                  "or give --stack-edu-contents local:PATH") from None
        config = Config(signature_version=UNSIGNED, retries={"max_attempts": max_attempts, "mode": "standard"},
                        max_pool_connections=self.concurrency, connect_timeout=timeout, read_timeout=timeout)
        self.client: Any = boto3.client("s3", config=config)

    def _cache_path(self, blob_id: str) -> Path | None:
        return None if self.cache is None else self.cache / blob_id[:2] / blob_id

    def _one(self, blob_id: str) -> Fetched:
        if not blob_id or "/" in blob_id or blob_id.startswith("."):
            return Fetched(None, "blob_missing", f"not a blob id: {blob_id!r}")
        if self.local is not None:
            for candidate in (self.local / blob_id, self.local / f"{blob_id}.gz", self.local / "content" / blob_id):
                if candidate.is_file():
                    return Fetched(_decode(candidate.read_bytes()))
            return Fetched(None, "blob_missing", f"{blob_id} not in {self.local}")
        cached = self._cache_path(blob_id)
        if cached is not None and cached.is_file():
            return Fetched(cached.read_text(encoding="utf-8"))
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"content/{blob_id}")["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                return Fetched(None, "blob_missing", f"s3://{self.bucket}/content/{blob_id} does not exist")
            return Fetched(None, "fetch_failed", f"s3://{self.bucket}/content/{blob_id}: {code or exc}")
        except BotoCoreError as exc:  # connection errors once botocore's retries are spent
            return Fetched(None, "fetch_failed", f"s3://{self.bucket}/content/{blob_id}: {exc}")
        text = _decode(body)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(cached)  # atomic: a killed run leaves no half-written blob
        return Fetched(text)

    def fetch(self, blob_ids: list[str]) -> dict[str, Fetched]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return dict(zip(blob_ids, pool.map(self._one, blob_ids)))


def with_contents(rows: Any, fetcher: ContentFetcher, *, id_field: str = "blob_id", text_field: str = "text",
                  batch: int = 64) -> Any:
    """Stack-Edu rows with `text_field` filled from their blob, in order, `batch` blobs in flight;
    a blob that could not be had leaves `text_field` None and `_contents_error` = (reason, detail)."""
    pending: list[dict[str, Any]] = []

    def flush() -> Any:
        results = fetcher.fetch([str(r.get(id_field) or "") for r in pending if not r.get(text_field)])
        for row in pending:
            if row.get(text_field):  # a copy that already carries the contents
                yield row
                continue
            got = results[str(row.get(id_field) or "")]
            row = dict(row)
            row[text_field] = got.text
            if got.text is None:
                row["_contents_error"] = (got.reason, got.detail)
            yield row
        pending.clear()

    for row in rows:
        pending.append(row)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()
