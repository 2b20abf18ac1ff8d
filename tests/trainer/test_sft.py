"""`dgrpo-train sft` on CPU with a tiny random Qwen3 and a locally trained tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import chat_parquet, cli, cli_killed_at, longblocks_parquet
from openai_double import _free_port
from trainer.config import ConfigError, DataConfig, SFTConfig, load_config
from trainer.data import IGNORE, SFTData, tokenize_chat
from trainer.model import FusedLogprobLM


def write_config(path: Path, model: Path, long: Path, short: Path | None, out: Path, **optim) -> Path:
    lines = [
        "[model]", f'path = "{model}"', "gradient_checkpointing = false",
        "[data]", "max_seq_len = 512", "short_fraction = 0.1",
        "[[data.long]]", f'path = "{long}"',
    ]
    if short:
        lines += ["[[data.short]]", f'path = "{short}"']
    settings = {"lr": 3e-3, "warmup_steps": 2, "tokens_per_step": 1024, "steps": 12, **optim}
    lines += ["[optim]", *[f"{k} = {v}" for k, v in settings.items()],
              "[run]", f'out = "{out}"', "save_every = 4", "tensorboard = false"]
    path.write_text("\n".join(lines) + "\n")
    return path


def data_config(*overrides: str) -> DataConfig:
    """A [data] section from `--data.key=value` overrides."""
    return load_config(DataConfig, None, [o.replace("--data.", "--", 1) for o in overrides])


def losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_only_assistant_tokens_are_trained(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "question words"}, {"role": "assistant", "content": "the answer"},
                {"role": "user", "content": "again"}, {"role": "assistant", "content": "second reply"}]
    ids, labels = tokenize_chat(tok, messages)
    trained = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
    assert trained == "the answer<|im_end|>\nsecond reply<|im_end|>\n"
    assert "question" not in trained and "again" not in trained


def test_packed_and_unpacked_batches_give_the_same_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = FusedLogprobLM(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)).eval()
    cfg = data_config(f'--data.long=[{{path="{longblocks_parquet(tmp_path / "lb.parquet", 6)}"}}]', "--data.max_seq_len=2048")
    data = SFTData(cfg, tok)
    packed = data.next_pack()
    assert packed["position_ids"].count(0) >= 2, "several samples in one pack"
    starts = [i for i, p in enumerate(packed["position_ids"]) if p == 0] + [len(packed["input_ids"])]

    def nll(ids: list[int], pos: list[int], labels: list[int]) -> float:
        mask = torch.tensor([labels[1:]]) != IGNORE
        with torch.no_grad():
            lp = model(torch.tensor([ids]), torch.tensor([pos]), mask=mask).logprobs
        return -lp.sum().item()

    packed_nll = nll(packed["input_ids"], packed["position_ids"], packed["labels"])
    separate = sum(nll(packed["input_ids"][a:b], packed["position_ids"][a:b], packed["labels"][a:b])
                   for a, b in zip(starts, starts[1:]))
    assert packed_nll == pytest.approx(separate, rel=1e-5)


def test_mixture_sampler_realizes_the_token_ratio(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = data_config(f'--data.long=[{{path="{longblocks_parquet(tmp_path / "lb.parquet", 50)}"}}]',
                      f'--data.short=[{{path="{chat_parquet(tmp_path / "chat.parquet", 200)}"}}]', "--data.short_fraction=0.3")
    data = SFTData(cfg, tok)
    for _ in range(300):
        data.next_sample()
    assert data.realized_short_fraction() == pytest.approx(0.3, abs=0.02)
    again = SFTData(cfg, tok)  # same seed, same stream
    first = SFTData(cfg, tok)
    assert [(s.group, s.index) for s in (again.next_sample() for _ in range(30))] == \
        [(s.group, s.index) for s in (first.next_sample() for _ in range(30))]


def test_overlong_samples_are_dropped_or_truncated_and_counted(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = longblocks_parquet(tmp_path / "lb.parquet", 10, words=400)
    drop = SFTData(data_config(f'--data.long=[{{path="{long}"}}]', "--data.max_seq_len=300"), tok)
    with pytest.raises(ConfigError, match="no usable sample"):  # every row is over-long: a clear error, no hang
        drop.next_sample()
    assert drop.state.dropped_overlong >= 10
    # Truncation keeps the first max_seq_len tokens; a sample left with assistant tokens is kept.
    chat = tmp_path / "chat.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "tell a story"},
                                                       {"role": "assistant", "content": "once upon a time " * 200}]}]), chat)
    cut = SFTData(data_config(f'--data.long=[{{path="{chat}"}}]', "--data.max_seq_len=300", "--data.overlong=truncate"), tok)
    sample = cut.next_sample()
    assert len(sample.input_ids) == 300 and cut.state.truncated == 1


def test_sft_on_longblocks_columns_loss_decreases_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    long = longblocks_parquet(tmp_path / "lb.parquet", 40)
    short = chat_parquet(tmp_path / "chat.parquet", 40)
    cfg = write_config(tmp_path / "sft.toml", tiny_model_dir, long, short, tmp_path / "run")
    result = cli("dgrpo-train", "sft", "--config", str(cfg), timeout=600)
    values = losses(tmp_path / "run")
    assert len(values) == 12
    assert sum(values[-3:]) / 3 < 0.8 * sum(values[:3]) / 3, values  # seeded: 5.97 -> 4.36
    assert "realized short fraction" in result.stderr
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert exported.config.num_hidden_layers == 2
    assert (tmp_path / "run" / "config.json").exists() and (tmp_path / "run" / "metrics.png").exists()


@pytest.mark.slow
def test_killed_sft_resumes_with_identical_following_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    long = longblocks_parquet(tmp_path / "lb.parquet", 40)
    ref_cfg = write_config(tmp_path / "ref.toml", tiny_model_dir, long, None, tmp_path / "ref")
    cli("dgrpo-train", "sft", "--config", str(ref_cfg), timeout=600)
    cfg = write_config(tmp_path / "kill.toml", tiny_model_dir, long, None, tmp_path / "kill")
    cli_killed_at(tmp_path / "kill" / "checkpoints" / "step-4" / "COMPLETE", "dgrpo-train", "sft", "--config", str(cfg))
    assert not (tmp_path / "kill" / "final").exists()
    cli("dgrpo-train", "sft", "--config", str(cfg), timeout=600)
    assert losses(tmp_path / "kill") == pytest.approx(losses(tmp_path / "ref"), rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_a_damaged_checkpoint_falls_back_to_the_one_before_and_says_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A killed run whose newest checkpoint was then damaged (a truncated DCP shard) resumes from the
    complete one before it, says so in one line, and still ends with the uninterrupted run's losses;
    the scheduler and RNG files load with weights_only=True."""
    long = longblocks_parquet(tmp_path / "lb.parquet", 40)
    ref_cfg = write_config(tmp_path / "ref.toml", tiny_model_dir, long, None, tmp_path / "ref")
    cli("dgrpo-train", "sft", "--config", str(ref_cfg), timeout=600)
    cfg = write_config(tmp_path / "kill.toml", tiny_model_dir, long, None, tmp_path / "kill")
    cli_killed_at(tmp_path / "kill" / "checkpoints" / "step-8" / "COMPLETE", "dgrpo-train", "sft", "--config", str(cfg))
    shard = next((tmp_path / "kill" / "checkpoints" / "step-8" / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = cli("dgrpo-train", "sft", "--config", str(cfg), timeout=600, env={"COLUMNS": "400"})
    said = " ".join(result.stderr.split())
    assert "step-8 cannot be read" in said and "resuming from" in said and "step-4" in said, said
    assert "Traceback" not in result.stderr
    assert losses(tmp_path / "kill") == pytest.approx(losses(tmp_path / "ref"), rel=1e-6, abs=1e-7)
    import torch

    torch.load(tmp_path / "kill" / "checkpoints" / "step-12" / "rng-rank0.pt", weights_only=True)


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SFTConfig, None, ["--optim.lrr=1"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\npath = 3\n[data]\nmax_seq_len = 10\n[nope]\n")
    result = cli("dgrpo-train", "sft", "--config", str(bad), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "unknown key" in result.stderr


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """torchrun --nproc-per-node 2 (gloo, CPU) with FSDP2 sees the same global batches as one
    process and gives the same losses to tolerance."""
    long = longblocks_parquet(tmp_path / "lb.parquet", 40)
    one = write_config(tmp_path / "one.toml", tiny_model_dir, long, None, tmp_path / "one", packs_multiple_of=2, steps=6)
    two = write_config(tmp_path / "two.toml", tiny_model_dir, long, None, tmp_path / "two", packs_multiple_of=2, steps=6)
    cli("dgrpo-train", "sft", "--config", str(one), timeout=600)
    exe = str(Path(sys.executable).parent / "dgrpo-train")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()), "--no-python",
         exe, "sft", "--config", str(two)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-4), name


@pytest.mark.parametrize("name", ["sft", "rl"])
def test_the_shipped_configs_load_and_are_the_docs(name: str) -> None:
    """configs/sft.toml and configs/rl.toml load with every key checked, and docs/dgrpo-train.md shows them as they are."""
    import re

    from conftest import ROOT
    from trainer.config import RLConfig, SFTConfig, load_config

    path = ROOT / "configs" / f"{name}.toml"
    cfg = load_config({"sft": SFTConfig, "rl": RLConfig}[name], path)
    assert cfg.model.path and cfg.data.long
    block = re.search(rf"```toml\n# configs/{name}\.toml\n(.*?)```", (ROOT / "docs" / "dgrpo-train.md").read_text(), re.S).group(1)
    assert path.read_text().split("\n", 1)[1] == block
