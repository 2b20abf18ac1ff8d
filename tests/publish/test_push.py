"""`longblocks push` over real HTTP against a local stand-in for the Hub API (HF_ENDPOINT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli
from hub_double import HubDouble
from longblocks.publish import publish
from longblocks.push import plan_commits
from run_fixture import build_run

TOKEN = "hf_TESTTOKEN_never_in_files_0123456789"


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
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
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
    assert not [r for r in hub.requests if not any(k in r[1] for k in ("preupload", "commit", "create", "validate-yaml", "revision"))]
    assert TOKEN not in result.stdout + result.stderr + again.stdout + again.stderr
    for path in published.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes()
