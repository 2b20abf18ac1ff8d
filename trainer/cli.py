"""`dgrpo-train` command line: SFT cold start, dGRPO, and evaluation.
Must not hold training logic; each command calls one recipe of the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="dGRPO trainer: SFT cold start on a short/long token mixture, then GRPO's clipped objective plus "
    "on-policy distillation from a teacher, with fused kernels that never materialize the logits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _not_yet(name: str) -> None:
    console.print(f"[yellow]dgrpo-train {name}[/] is not implemented yet in this release.")
    raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sft(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML run configuration.")] = None,
) -> None:
    """Supervised cold start on a token-level short/long mixture (default 10/90 by tokens).

    Overrides follow the config: `--optim.lr=3e-5 --data.max_seq_len=32768 --run.out=runs/x`.
    Runs in one process, or with FSDP2 under `torchrun --nproc-per-node N`. Re-running the same
    command resumes from the latest checkpoint in run.out.
    """
    from trainer.config import ConfigError, SFTConfig, load_config
    from trainer.sft import train

    try:
        cfg = load_config(SFTConfig, config, list(ctx.args))
        if not cfg.model.path:
            raise ConfigError("model.path is required (a local folder or Hub id)")
        train(cfg)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def rl(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML run configuration.")] = None,
) -> None:
    """dGRPO: GRPO's clipped objective on group-relative rewards minus beta x KL(student || teacher)
    on the student's own rollouts.

    GRPO is `--objective.beta=0`; on-policy distillation is a reward with weight 0. Teachers:
    `--teacher.source=local --teacher.path=DIR` (exact full-vocabulary KL through the fused
    kernels), `served` (an OpenAI-compatible endpoint returning prompt log-probs, e.g. vLLM), or
    `precomputed` (log-probs stored with replayed rollouts, `--data.replay=DIR`). Rollouts with
    `--rollout.engine=hf` (transformers generate) or `vllm` (colocated). Runs in one process or
    with FSDP2 under `torchrun --nproc-per-node N`; re-running the same command resumes.
    """
    from trainer.config import ConfigError, RLConfig, load_config
    from trainer.rl import train

    try:
        train(load_config(RLConfig, config, list(ctx.args)))
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval() -> None:  # noqa: A001 - the command is named eval
    """RULER-style long-context evaluation. Not implemented yet."""
    _not_yet("eval")


if __name__ == "__main__":
    app()
