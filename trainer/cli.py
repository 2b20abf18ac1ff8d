"""`dgrpo-train` command line: SFT cold start, dGRPO, and evaluation.
Must not hold training logic; each command calls one recipe of the package.
"""

from __future__ import annotations

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
def sft() -> None:
    """Supervised cold start (SFT) on a token-level short/long mixture. Not implemented yet."""
    _not_yet("sft")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def rl() -> None:
    """dGRPO: GRPO's clipped objective plus beta x KL to a teacher on the student's rollouts. Not implemented yet."""
    _not_yet("rl")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval() -> None:  # noqa: A001 - the command is named eval
    """RULER-style long-context evaluation. Not implemented yet."""
    _not_yet("eval")


if __name__ == "__main__":
    app()
