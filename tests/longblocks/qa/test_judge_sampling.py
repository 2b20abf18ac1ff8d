"""The judge is one stage with one sampling: `longblocks filter` (and its alias `judge`), the
`[judge]` section of `longblocks run` and `longblocks generate --judge.model` send the same sampling
parameters and record the same ones in their manifests (over real HTTP to the scripted test-double
server); `[filter]` is the same section as `[judge]`."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

from conftest import cli, random_text
from longblocks.backends import sampling_of
from longblocks.config import JudgeSection, load_pipeline
from longblocks.manifest import stage_stats
from openai_double import ScriptedServer


def test_judge_samples_the_same_in_every_command(tmp_path: Path) -> None:
    rng = random.Random(0)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.md").write_text("[[mode:good]] " + random_text(rng, 150))
    with ScriptedServer() as server:
        url = server.base_url
        # generate: the generator's own sampling flags differ from the judge's defaults on purpose
        cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(tmp_path / "gen"), "--select.min-tokens", "10",
            "--model", "scripted-gen", "--base-url", url, "--temperature", "0.2", "--top-p", "0.5",
            "--max-tokens", "300", "--judge.model", "scripted-judge")
        cli("longblocks", "filter", str(tmp_path / "gen" / "generate"), str(tmp_path / "alone"), "--model",
            "scripted-judge", "--base-url", url)
        pipeline = tmp_path / "pipeline.toml"
        pipeline.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[source]\nname = "local:{docs}"\n'
                            f'[select]\nmin_tokens = 10\n[generate]\nmodel = "scripted-gen"\nbase_url = "{url}"\n'
                            f'[judge]\nmodel = "scripted-judge"\nbase_url = "{url}"\n')
        cli("longblocks", "run", str(pipeline))
    manifests = [tmp_path / "gen" / "judge", tmp_path / "alone", tmp_path / "run" / "judge"]
    recorded = [stage_stats(json.loads((m / "manifest.json").read_text())).sampling for m in manifests]
    judge = sampling_of(JudgeSection())
    assert recorded[0] == recorded[1] == recorded[2] == asdict(judge), recorded
    sent = set(server.judge_sampling)
    assert len(server.judge_sampling) == 9 and sent == {(judge.temperature, judge.top_p, judge.max_tokens, judge.seed)}, sent
    assert all(json.loads((m / "manifest.json").read_text())["stage"] == "judge" for m in manifests)


def test_the_filter_section_is_the_judge_section(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[run]\nout = "x"\n[source]\nname = "local:."\n[filter]\nmodel = "m"\nmode = "choice"\n')
    cfg = load_pipeline(pipeline)
    assert (cfg.judge.model, cfg.judge.mode) == ("m", "choice")
    pipeline.write_text('[run]\nout = "x"\n[source]\nname = "local:."\n[filter]\nmodel = "m"\n[judge]\nmodel = "n"\n')
    result = cli("longblocks", "run", str(pipeline), check=False)
    assert result.returncode == 2 and "[filter] and [judge] are the same section" in result.stderr
    assert "Traceback" not in result.stderr
