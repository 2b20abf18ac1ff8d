"""One bf16 SFT step and one dGRPO step of a tiny model on the GPU (the correctness step of
`benchmarks/gpu_check.py --part all`): finite losses and KL, fp32 master weights that move, a
bf16 export. Skipped without CUDA; DGRPO_GPU_TESTS_ON_CPU=1 runs them on the CPU (bf16 autocast)
to check the tests themselves."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() and not os.environ.get("DGRPO_GPU_TESTS_ON_CPU"), reason="needs CUDA")]

COMMON = ["--model.dtype=bf16", "--run.tensorboard=false", "--model.gradient_checkpointing=false",
          "--run.save_every=1000"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_a_bf16_sft_step_keeps_fp32_master_weights_that_move(tiny_model_dir: Path, tmp_path: Path) -> None:
    from conftest import longblocks_parquet
    from trainer.config import SFTConfig, load_config
    from trainer.recipe import setup
    from trainer.sft import train

    data = longblocks_parquet(tmp_path / "lb.parquet", 16)
    cfg = load_config(SFTConfig, None, [f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{data}'}}]",
                                        "--optim.steps=2", "--optim.lr=1e-3", "--optim.tokens_per_step=2048",
                                        f"--run.out={tmp_path / 'sft'}", *COMMON])
    run = setup(cfg, optimizer_steps=2)
    assert run.compute_dtype == torch.bfloat16 and {p.dtype for p in run.causal_lm.parameters()} == {torch.float32}
    summary = train(cfg)
    assert len(summary["losses"]) == 2 and all(math.isfinite(x) for x in summary["losses"])
    before, after = weights(tiny_model_dir), weights(Path(summary["export"]))
    assert {v.dtype for v in after.values()} == {torch.bfloat16}  # exported in the compute dtype
    assert any(not torch.equal(before[k].to(torch.bfloat16), after[k]) for k in after)


def test_a_dgrpo_step_with_a_local_teacher_has_a_finite_loss_and_kl(tiny_model_dir: Path, tmp_path: Path) -> None:
    from conftest import longblocks_parquet
    from trainer.config import RLConfig, load_config
    from trainer.rl import train

    data = longblocks_parquet(tmp_path / "lb.parquet", 16)
    summary = train(load_config(RLConfig, None, [
        f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{data}'}}]", "--teacher.source=local",
        f"--teacher.path={tiny_model_dir}", "--teacher.dtype=bf16", "--objective.beta=1.0",
        "--rewards=[{name='token_f1', weight=1.0}]", "--rollout.prompts_per_step=2", "--rollout.group_size=2",
        "--rollout.max_new_tokens=8", "--optim.steps=1", "--optim.lr=1e-3", f"--run.out={tmp_path / 'rl'}", *COMMON]))
    [step] = summary["history"]
    assert math.isfinite(step["loss"]) and math.isfinite(step["teacher_kl"]) and step["teacher_kl"] >= -1e-6
    assert math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0
