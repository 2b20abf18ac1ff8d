"""Golden values of the dGRPO step: each accepted objective configuration's loss and student
gradient norm on one fixed micro-batch (tiny random Qwen3 student, teacher and reference, real
teacher scoring, the policy head, the loss), recorded from the code before the teacher-term
refactor. Where the meaning of a configuration is unchanged the values must stay (1e-6).

Regenerate only when a meaning changes on purpose: `python tests/trainer/test_objective_golden.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

GOLDEN = Path(__file__).with_name("golden_objectives.json")
TEMPERATURE = 0.8
VOCAB = 61  # not a multiple of any block size
# Each case: ObjectiveConfig keys, plus "_horizon" (TOPD's h in tokens) where set.
CASES: dict[str, dict[str, Any]] = {
    "grpo": {"beta": 0.0},
    "full-reverse": {"beta": 0.5, "estimator": "full"},
    "full-forward": {"beta": 0.5, "estimator": "full", "direction": "forward"},
    "full-jsd": {"beta": 0.5, "estimator": "full", "direction": "jsd", "jsd_beta": 0.3},
    "topk-reverse": {"beta": 0.5, "estimator": "topk", "top_k": 5},
    "topk-forward": {"beta": 0.5, "estimator": "topk", "top_k": 5, "direction": "forward"},
    "topk-jsd": {"beta": 0.5, "estimator": "topk", "top_k": 5, "direction": "jsd"},
    "k2-loss": {"beta": 0.5, "estimator": "k2"},
    "k1-advantage": {"beta": 0.5, "estimator": "k1", "combine": "advantage"},
    "k3-forward": {"beta": 0.5, "estimator": "k3", "direction": "forward"},
    "k2-token-mean": {"beta": 0.5, "estimator": "k2", "aggregation": "token-mean"},
    "k2-seq-sum-norm": {"beta": 0.5, "estimator": "k2", "aggregation": "seq-sum-norm", "norm_constant": 8.0},
    "clip-higher": {"beta": 0.5, "estimator": "full", "eps_high": 0.28},
    "vopd": {"beta": 0.5, "estimator": "k1", "combine": "advantage", "baseline": "exact_kl"},
    "topd": {"beta": 0.5, "estimator": "full", "horizon": 3.0, "_horizon": 3},
    "gopd": {"beta": 0.5, "estimator": "k1", "combine": "advantage", "reward_scale": 1.5},
    "no-std-scaling": {"beta": 0.5, "estimator": "k2", "scale_std": False},
}


def build_models(root: Path) -> dict[str, Path]:
    """Student (hidden 32), teacher (hidden 48) and G-OPD reference (hidden 32), seeded."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    paths = {}
    for name, hidden, seed in (("student", 32, 0), ("teacher", 48, 1), ("reference", 32, 2)):
        config = Qwen3Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                             tie_word_embeddings=name != "teacher", bos_token_id=None, eos_token_id=0, pad_token_id=0)
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
        with torch.no_grad():  # random heads a little sharper than init, so the KL is not tiny
            model.get_output_embeddings().weight.mul_(8.0)
        paths[name] = root / name
        model.save_pretrained(paths[name])
    return paths


def fixed_rollouts() -> tuple[list[Any], list[float], list[bool]]:
    from trainer.batch import Rollout

    gen = torch.Generator().manual_seed(7)
    rollouts = []
    for prompt_len, completion_len in ((4, 6), (3, 2), (5, 5), (4, 1), (3, 4)):
        ids = torch.randint(1, VOCAB, (prompt_len + completion_len,), generator=gen).tolist()
        rollouts.append(Rollout(ids[:prompt_len], ids[prompt_len:], None, True))
    return rollouts, [1.0, -0.5, 0.25, 0.0, -1.25], [True, True, False, True, True]


def old_offsets(shape: torch.Size) -> torch.Tensor:
    """log pi_old - log pi_theta per token: a fixed pattern that puts tokens on both clip edges."""
    pattern = torch.tensor([-0.4, 0.0, 0.3, 0.1, -0.15, 0.25])
    return pattern.repeat(shape[0] * shape[1] // 6 + 1)[: shape[0] * shape[1]].reshape(shape)


def step_values(models: dict[str, Path], case: dict[str, Any]) -> dict[str, float]:
    """One micro-batch of the RL step for `case`: (loss, student gradient norm, summed KL)."""
    from trainer import objectives
    from trainer.batch import make_micro_batch
    from trainer.config import (DataSource, ModelConfig, ObjectiveConfig, RLConfig, RLDataConfig, RolloutConfig,
                                TeacherConfig)
    from trainer.model import FusedLogprobLM, load_causal_lm
    from trainer.teacher import Teacher

    obj = ObjectiveConfig(**{k: v for k, v in case.items() if not k.startswith("_")})
    cfg = RLConfig(model=ModelConfig(path=str(models["student"]), gradient_checkpointing=False),
                   teacher=TeacherConfig(source="local", path=str(models["teacher"])),
                   data=RLDataConfig(long=[DataSource(path="unused")]), rollout=RolloutConfig(temperature=TEMPERATURE),
                   objective=dataclasses.replace(obj, reference=str(models["reference"])))
    device = torch.device("cpu")
    student = FusedLogprobLM(load_causal_lm(cfg.model, device))
    teacher = Teacher(cfg, device)
    rollouts, advantages, valid = fixed_rollouts()
    mb = make_micro_batch(rollouts, advantages, valid, device)
    signal = teacher.signal(mb, teacher.score(rollouts))
    out = student(mb.input_ids, mb.position_ids, temperature=TEMPERATURE, mask=mb.target_mask, entropy=True,
                  teacher=signal)
    old = (mb.tokens(out.logprobs).detach() + old_offsets(mb.mask.shape)) * mb.mask
    loss, stats = objectives.step_loss(cfg.objective, out, signal, mb, old, objectives.normalizer(obj, mb.mask),
                                       objectives.Schedule(horizon=case.get("_horizon")))
    loss.backward()
    grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in student.parameters() if p.grad is not None))
    return {"loss": float(loss), "grad_norm": grad_norm, "kl_sum": float(stats["kl_sum"])}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_configuration_reproduces_its_recorded_loss_and_gradient(models: dict[str, Path], name: str) -> None:
    golden = json.loads(GOLDEN.read_text())[name]
    values = step_values(models, CASES[name])
    for key, expected in golden.items():
        assert values[key] == pytest.approx(expected, rel=1e-6, abs=1e-6), (name, key, values[key], expected)
    if name != "grpo":
        assert values["grad_norm"] > 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_models(Path(tmp))
        recorded = {name: step_values(paths, case) for name, case in sorted(CASES.items())}
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(json.dumps(recorded, indent=1, sort_keys=True))
