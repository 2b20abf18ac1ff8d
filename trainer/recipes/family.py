"""The on-policy distillation family as named arms: each is pure on-policy distillation (every
reward at weight 0, beta = 1, a local teacher) plus the `objective` keys that make it that variant
(formulas and papers in `trainer/objectives.py`). The CPU comparison (`benchmarks/opd_family_cpu.py`)
and the GPU replication (`python -m trainer.recipes.replicate --extra-arms ...`) run them by name.
Must not hold objective logic: only configuration.
"""

from __future__ import annotations

_K1 = ("--objective.estimator=k1", "--objective.combine=advantage")

# The paper's RL arms: name -> (objective.beta, the reward's weight).
PAPER_ARMS: dict[str, tuple[float, float]] = {"grpo": (0.0, 1.0), "opd": (1.0, 0.0), "dgrpo": (1.0, 1.0),
                                              "dgrpo_cold": (1.0, 1.0)}

# name -> objective overrides on top of pure OPD with the exact reverse KL (estimator full, loss);
# "{half}" is replaced by half the run's steps (the POPD growth and REOPOLD's exploration phase).
FAMILY: dict[str, tuple[str, ...]] = {
    "opd_k1": _K1,  # tinker's recipe: the sampled log-ratio in the advantage
    "vopd": (*_K1, "--objective.baseline=exact_kl"),
    "opd_forward": ("--objective.direction=forward",),
    "opd_jsd": ("--objective.direction=jsd", "--objective.jsd_beta=0.5"),
    "topd": ("--objective.horizon=0.1",),
    "popd": ("--objective.horizon=0.1", "--objective.horizon_final=1.0", "--objective.horizon_steps={half}"),
    "gopd": (*_K1, "--objective.reward_scale=1.5"),  # ExOPD: the reference is the student's initial weights
    "tip": ("--objective.token_select=tip", "--objective.token_fraction=0.5"),
    "reopold": (*_K1, "--objective.mixture_clip=0.2", "--objective.token_select=entropy",
                "--objective.token_fraction=0.5", "--objective.relax_steps={half}"),
}


def family_args(name: str, steps: int) -> list[str]:
    """The CLI overrides of arm `name` (pure OPD plus its objective keys) for a run of `steps`."""
    if name not in FAMILY:
        raise ValueError(f"unknown arm {name!r}; the family: {', '.join(FAMILY)}")
    pure = ["--objective.beta=1.0"]
    return pure + [arg.replace("{half}", str(max(1, steps // 2))) for arg in FAMILY[name]]
