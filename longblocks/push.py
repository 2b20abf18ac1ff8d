"""Upload a published dataset folder to the Hugging Face Hub with `huggingface_hub`: commits of
bounded size (data shards first, the card last), retried on 429/5xx, resumable (files already on
the Hub with the same content are skipped by the Hub's preupload check, and large-file objects
already stored are not sent again: the LFS batch API gives them no upload action).
Must not read or print a token: `huggingface_hub` takes it from HF_TOKEN or its login cache.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longblocks.errors import LongBlocksError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class PlannedCommit:
    message: str
    files: list[str]  # paths relative to the folder (= paths in the repo)
    size: int


def check_repo_id(repo_id: str) -> None:
    """A Hub dataset id, ORG/NAME, as `huggingface_hub` validates it, checked before any request
    (a dry run included): one line otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise LongBlocksError(f"--repo-id {repo_id!r} is not a Hub repo id: {exc}") from None
    if repo_id.count("/") != 1:
        raise LongBlocksError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")


def plan_commits(folder: str | Path, *, max_files: int = 50, max_bytes: int = 2_000_000_000) -> list[PlannedCommit]:
    """Data files in name order, batched by count and bytes; README.md alone in the last commit so
    the card appears once the data is complete. Hidden files (a lock, a shard being written) and
    *.tmp files are not uploaded."""
    folder = Path(folder)
    if not (folder / "README.md").exists():
        raise LongBlocksError(f"{folder} has no README.md: run `longblocks publish` first")
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.name != "README.md"
        and p.suffix != ".tmp"
    )
    commits: list[PlannedCommit] = []
    batch: list[str] = []
    size = 0
    for rel in files:
        file_size = (folder / rel).stat().st_size
        if batch and (len(batch) >= max_files or size + file_size > max_bytes):
            commits.append(PlannedCommit("", batch, size))
            batch, size = [], 0
        batch.append(rel)
        size += file_size
    if batch:
        commits.append(PlannedCommit("", batch, size))
    commits.append(PlannedCommit("", ["README.md"], (folder / "README.md").stat().st_size))
    total = len(commits)
    return [PlannedCommit(f"Upload LongBlocks dataset (part {i + 1}/{total})", c.files, c.size) for i, c in enumerate(commits)]


def _with_retries(call: Callable[[], object], *, what: str, max_retries: int, backoff: float,
                  log: Callable[[str], None]) -> object:
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(max_retries + 1):
        try:
            return call()
        except (HfHubHTTPError, RuntimeError) as exc:
            # an LFS upload's HTTP error reaches us wrapped: RuntimeError("Error while uploading 'path'...")
            http = exc if isinstance(exc, HfHubHTTPError) else exc.__cause__
            if not isinstance(http, HfHubHTTPError):
                raise
            status = http.response.status_code if http.response is not None else None
            if status not in RETRY_STATUS or attempt == max_retries:
                where = "" if http is exc else f"{exc} "
                raise LongBlocksError(f"{what} failed: {where}HTTP {status}: {str(http).splitlines()[0]}") from None
            reason = f"HTTP {status}"
        except OSError as exc:  # connection errors
            if attempt == max_retries:
                raise LongBlocksError(f"{what} failed: {exc}") from None
            reason = type(exc).__name__
        delay = min(60.0, backoff * 2**attempt) * (0.5 + random.random())
        log(f"{what}: {reason}, retrying in {delay:.1f}s ({attempt + 1}/{max_retries})")
        time.sleep(delay)
    raise AssertionError("unreachable")


def push(
    folder: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False, revision: str | None = None,
    max_files: int = 50, max_bytes: int = 2_000_000_000, max_retries: int = 6, backoff: float = 2.0,
    log: Callable[[str], None] = print,
) -> list[PlannedCommit]:
    """Create the dataset repo if needed and upload the folder commit by commit."""
    check_repo_id(repo_id)
    commits = plan_commits(folder, max_files=max_files, max_bytes=max_bytes)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    for commit in commits:
        log(f"{'would commit' if dry_run else 'commit'}: {commit.message} ({len(commit.files)} files, {commit.size:,} bytes)")
        for rel in commit.files:
            log(f"  {rel}")
    if dry_run:
        log(f"dry run: {len(commits)} commit(s) to dataset {repo_id} at {endpoint}; nothing uploaded")
        return commits

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint)  # the token comes from HF_TOKEN or the login cache, never from us
    _with_retries(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True),
                  what="create_repo", max_retries=max_retries, backoff=backoff, log=log)
    root = Path(folder)
    for commit in commits:
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(root / rel)) for rel in commit.files]
        _with_retries(
            lambda ops=operations, msg=commit.message: api.create_commit(
                repo_id, operations=ops, commit_message=msg, repo_type="dataset", revision=revision),
            what=commit.message, max_retries=max_retries, backoff=backoff, log=log,
        )
        log(f"done: {commit.message}")
    return commits
