from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT

from longblocks.errors import LongBlocksError
from longblocks.config import load_pipeline
from longblocks.sources import REGISTRY, open_source

PIPELINES = sorted((ROOT / "pipelines").glob("*.toml"))


def test_there_is_one_pipeline_per_registered_source() -> None:
    assert {p.stem for p in PIPELINES} >= set(REGISTRY) | {"quickstart"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_files_parse_and_resolve(path: Path) -> None:
    cfg = load_pipeline(path)
    source = open_source(cfg.source)
    quotas = cfg.source.resolved_quotas()
    assert quotas and all(n > 0 for n in quotas.values())
    if source.spec is not None:
        assert set(quotas) <= set(source.spec.languages)
    assert cfg.select.min_tokens < cfg.select.max_tokens


def test_pipeline_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nout = "x"\n[source]\nname = "arxiv"\n[selectt]\n')
    with pytest.raises(LongBlocksError, match="unknown section"):
        load_pipeline(bad)
    bad.write_text('[run]\nout = "x"\n[source]\nname = "arxiv"\n[select]\nmin_tokns = 3\n')
    with pytest.raises(LongBlocksError, match="min_tokns"):
        load_pipeline(bad)
    with pytest.raises(LongBlocksError, match="does not exist"):
        load_pipeline(tmp_path / "none.toml")
