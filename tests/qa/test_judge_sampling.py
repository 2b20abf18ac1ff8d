"""The judge is one stage with one sampling: `longblocks judge`, the `[judge]` section of
`longblocks run` and `longblocks generate --judge-model` send the same sampling parameters and
record the same ones in their manifests (over real HTTP to the scripted test-double server)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

from conftest import cli, random_text
from longblocks.config import JUDGE_SAMPLING
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
        cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(tmp_path / "gen"), "--min-tokens", "10",
            "--model", "scripted-gen", "--base-url", url, "--temperature", "0.2", "--top-p", "0.5",
            "--max-new-tokens", "300", "--judge-model", "scripted-judge")
        cli("longblocks", "judge", str(tmp_path / "gen" / "generate"), str(tmp_path / "alone"), "--model",
            "scripted-judge", "--base-url", url)
        pipeline = tmp_path / "pipeline.toml"
        pipeline.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[source]\nname = "local:{docs}"\n'
                            f'[select]\nmin_tokens = 10\n[generate]\nmodel = "scripted-gen"\nbase_url = "{url}"\n'
                            f'[judge]\nmodel = "scripted-judge"\nbase_url = "{url}"\n')
        cli("longblocks", "run", str(pipeline))
    manifests = [tmp_path / "gen" / "judge", tmp_path / "alone", tmp_path / "run" / "judge"]
    recorded = [json.loads((m / "manifest.json").read_text())["judge"]["sampling"] for m in manifests]
    assert recorded[0] == recorded[1] == recorded[2] == asdict(JUDGE_SAMPLING), recorded
    sent = set(server.judge_sampling)
    assert len(server.judge_sampling) == 9 and sent == {(JUDGE_SAMPLING.temperature, JUDGE_SAMPLING.top_p,
                                                         JUDGE_SAMPLING.max_tokens, JUDGE_SAMPLING.seed)}, sent
    assert all(json.loads((m / "manifest.json").read_text())["stage"] == "judge" for m in manifests)


def test_a_pipeline_with_the_old_filter_section_is_refused(tmp_path: Path) -> None:
    pipeline = tmp_path / "old.toml"
    pipeline.write_text('[run]\nout = "x"\n[source]\nname = "local:."\n[filter]\nmodel = "m"\n')
    result = cli("longblocks", "run", str(pipeline), check=False)
    assert result.returncode == 2 and "[filter] section is now called [judge]" in result.stderr
    assert "Traceback" not in result.stderr
