"""`longblocks push` over real HTTP against a local stand-in for the Hub API (HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import cli
from hub_double import HubDouble
from longblocks.publish import publish
from longblocks.push import plan_commits
from run_fixture import build_run

TOKEN = "hf_TESTTOKEN_never_in_files_0123456789"


def hub_env(hub: HubDouble) -> dict[str, str]:
    # Xet (the Hub's newer transfer) is not emulated: the legacy LFS batch + PUT path is the one tested.
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1"}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("push")
    build_run(root / "run")
    publish(root / "run", root / "pub", repo_id="org/lb", max_shard_size="40KB")
    return root / "pub"


def test_dry_run_lists_exact_files_and_commits(published: Path) -> None:
    plan = plan_commits(published, max_files=2)
    shards = sorted(str(p.relative_to(published)) for p in (published / "data").glob("*.parquet"))
    assert [f for c in plan[:-1] for f in c.files] == shards and plan[-1].files == ["README.md"]
    assert all(len(c.files) <= 2 for c in plan)
    result = cli("longblocks", "push", str(published), "--repo-id", "org/lb", "--dry-run", "--max-commit-files", "2",
                 env={"HF_TOKEN": TOKEN})
    for commit in plan:
        assert commit.message in result.stderr
        for rel in commit.files:
            assert rel in result.stderr
    assert "nothing uploaded" in result.stderr


def test_push_uploads_every_file_retrying_a_429(published: Path, tmp_path: Path) -> None:
    with HubDouble(tmp_path / "hub") as hub:
        env = hub_env(hub)
        result = cli("longblocks", "push", str(published), "--repo-id", "org/lb", "--private",
                     "--max-commit-files", "2", env=env)
        again = cli("longblocks", "push", str(published), "--repo-id", "org/lb", "--max-commit-files", "2", env=env)
    assert hub.repos == {"org/lb": {"private": True, "type": "dataset"}}
    assert "HTTP 429" in result.stderr and "retrying" in result.stderr
    uploaded = sorted(str(p.relative_to(tmp_path / "hub" / "org" / "lb")) for p in (tmp_path / "hub").rglob("*") if p.is_file())
    local = sorted(str(p.relative_to(published)) for p in published.rglob("*") if p.is_file())
    assert uploaded == local
    for rel in local:
        assert (tmp_path / "hub" / "org" / "lb" / rel).read_bytes() == (published / rel).read_bytes()
    plan = plan_commits(published, max_files=2)
    assert [c["summary"] for c in hub.commits[: len(plan)]] == [c.message for c in plan]
    assert hub.commits[len(plan) - 1]["files"] == ["README.md"]
    # The second push finds every file unchanged (preupload oids match) and commits nothing new.
    assert len(hub.commits) == len(plan) and "Traceback" not in again.stderr
    assert hub.auth == {f"Bearer {TOKEN}"}
    assert hub.validated and hub.validated[0] == (published / "README.md").read_text()  # the card passed validation
    assert not [r for r in hub.requests
                if not any(k in r[1] for k in ("preupload", "commit", "create", "validate-yaml", "revision", "lfs"))]
    shards = [p for p in published.rglob("*.parquet")]
    assert sorted(hub.lfs_puts) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in shards)  # parquet: LFS
    assert TOKEN not in result.stdout + result.stderr + again.stdout + again.stderr
    for path in published.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes()


def test_a_push_cut_off_mid_upload_resumes_without_uploading_anything_twice(published: Path, tmp_path: Path) -> None:
    """Shards go up as LFS objects (batch API, PUT, verify); the stand-in refuses the 4th upload, so
    the first push stops in its second commit with one object of that commit already stored. The
    re-run skips the committed shards (preupload sha256 match) and the stored object (the batch API
    gives it no upload action): every object is PUT exactly once, and the repo equals the folder."""
    shards = sorted(published.rglob("*.parquet"))
    assert len(shards) >= 4, "the fixture must publish at least four shards"
    with HubDouble(tmp_path / "hub", fail_first_commit=0, lfs_uploads_allowed=3) as hub:
        cut = cli("longblocks", "push", str(published), "--repo-id", "org/lb", "--max-commit-files", "2",
                  env=hub_env(hub), check=False)
        assert cut.returncode != 0 and "HTTP 403" in cut.stderr and "Traceback" not in cut.stderr
        assert len(hub.lfs_puts) == 3 and len(hub.commits) == 1
        hub.lfs_uploads_allowed = None
        cli("longblocks", "push", str(published), "--repo-id", "org/lb", "--max-commit-files", "2", env=hub_env(hub))
    assert sorted(hub.lfs_puts) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in shards)
    assert len(hub.lfs_puts) == len(set(hub.lfs_puts)) and set(hub.lfs_verified) == set(hub.lfs_puts)
    repo = tmp_path / "hub" / "org" / "lb"
    for path in published.rglob("*"):
        if path.is_file():
            assert (repo / path.relative_to(published)).read_bytes() == path.read_bytes()


def test_a_bad_repo_id_is_one_line_before_any_request(published: Path) -> None:
    """Checked by huggingface_hub's own validation before anything is listed or sent, a dry run
    included (no "commit:" line first, no traceback)."""
    for repo_id in ("../x", "org/x y", "a/b/c"):
        for extra in ((), ("--dry-run",)):
            result = cli("longblocks", "push", str(published), "--repo-id", repo_id, *extra, check=False,
                         env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": TOKEN})
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert repr(repo_id) in lines[0] and "commit" not in lines[0]


def test_leftovers_of_a_killed_or_earlier_publish_are_never_uploaded(published: Path, tmp_path: Path) -> None:
    """A killed publish's shard being written is hidden (and removed by the next publish); an earlier
    publish's shards of another count are removed; a lock file is never listed."""
    import shutil

    folder = tmp_path / "pub"
    shutil.copytree(published, folder)
    (folder / "data" / ".train-00000-of-00009.tmp").write_bytes(b"half a shard")
    (folder / "data" / "train-00008-of-00009.parquet").write_bytes(b"an earlier publish's shard")
    files = [f for c in plan_commits(folder) for f in c.files]
    assert not any(".tmp" in f for f in files)
    publish(published.parent / "run", folder, repo_id="org/lb", max_shard_size="40KB")
    assert sorted(p.name for p in (folder / "data").iterdir()) == sorted(p.name for p in (published / "data").iterdir())
    assert not list(folder.rglob(".*")), "nothing hidden (a lock, a temporary shard) is left in the folder"


def test_two_publishes_into_one_folder_one_refused(published: Path, tmp_path: Path) -> None:
    """A second publish into a folder another one is writing is refused in one line (the folder's
    lock), never interleaved: the folder ends as one publish wrote it."""
    import subprocess
    import sys
    import time

    folder = tmp_path / "pub"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from longblocks.store import directory_lock\n"
         "with directory_lock(Path(sys.argv[1]), lock=Path(sys.argv[2])):\n    print('locked', flush=True)\n"
         "    time.sleep(60)", str(folder), str(tmp_path / ".pub.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = cli("longblocks", "publish", str(published.parent / "run"), str(folder), check=False)
        assert result.returncode == 2 and "is being written by another run" in result.stderr
        assert f"pid {holder.pid}" in result.stderr and not (folder / "data").exists()
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    finally:
        holder.kill()
        holder.wait()
    del time
