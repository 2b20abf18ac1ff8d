"""`dgrpo-train` command line: SFT cold start, dGRPO, evaluation, and the configs they read. Every
command's flags are its config dataclass's keys (`longblocks.flags`), in the same form as the TOML
file and read by the same `options.build`. Must not hold training logic; each command calls one
recipe of the package, after the config and paths are checked (before torch loads).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from longblocks.flags import Table, config_command, render_toml
from longblocks.options import OptionError, build, read_file
from trainer.config import ConfigError, EvalConfig, RLConfig, SFTConfig, check_paths

CONFIGS = {"sft": SFTConfig, "rl": RLConfig, "eval": EvalConfig}
SHIPPED = {"sft": "configs/sft.toml (the paper's setup), configs/quickstart-sft.toml (the quickstart's data, offline)",
           "rl": "configs/rl.toml (the paper's setup), configs/quickstart-rl.toml (the quickstart's data, offline)",
           "eval": "none needed: every key is a flag"}


def command(name: str, help_text: str, run: Callable[[Any], Any],
            errors: tuple[type[Exception], ...] = (OptionError,)) -> click.Command:
    """`dgrpo-train NAME [--config FILE] [--section.key=value ...]`: one flag per key of its config."""
    cls = CONFIGS[name]

    def build_and_run(data: dict[str, Any], config: Path | None) -> None:
        run(build(cls, data, str(config) if config is not None else "config", ConfigError))

    text = (f"{help_text}\n\nEvery key of the config is a flag, as --section.key=VALUE (a TOML value; a word, a,b "
            f"for a list); a flag wins over the --config file. `dgrpo-train config {name}` prints them all as a "
            f"commented TOML file.")
    return config_command(name, text, [Table(cls)], build_and_run, read=read_file, errors=errors,
                          config_help=f"A TOML or YAML config; flags override it. Shipped: {SHIPPED[name]}.")


def _sft(cfg: SFTConfig) -> None:
    check_paths(cfg)  # paths checked before torch and the model load
    from trainer.sft import train

    train(cfg)


def _rl(cfg: RLConfig) -> None:
    check_paths(cfg)
    from trainer.rl import train

    train(cfg)


def _eval(cfg: EvalConfig) -> None:
    from trainer.eval.run import evaluate

    evaluate(cfg)


class Ordered(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=Ordered, no_args_is_help=True)
def app() -> None:
    """dGRPO trainer: SFT cold start on a short/long token mixture, then GRPO's clipped objective plus
    on-policy distillation from a teacher, with fused kernels that never materialize the logits."""


app.add_command(command("sft", "Supervised cold start on a token-level short/long mixture (default 10/90 "
                               "by tokens). Runs in one process, or with FSDP2 under `torchrun --nproc-per-node N`; "
                               "re-running the same command resumes from the latest checkpoint in run.out.", _sft))
app.add_command(command(
    "rl", "dGRPO: GRPO's clipped objective on group-relative rewards minus beta x KL(student || teacher) on the "
    "student's own rollouts. GRPO is --objective.beta=0; on-policy distillation is a reward with weight 0. Teachers: "
    "--teacher.source=local --teacher.path=DIR (exact full-vocabulary KL through the fused kernels), served (an "
    "OpenAI-compatible endpoint returning prompt log-probs, e.g. vLLM) or precomputed (log-probs stored with "
    "replayed rollouts, --data.replay=DIR). Rollouts with --rollout.engine=hf (transformers) or vllm (colocated). "
    "Runs in one process or with FSDP2 under torchrun; re-running the same command resumes.", _rl))
app.add_command(command(
    "eval", "RULER's 13 synthetic tasks as RULER defines them (templates, answer prefixes, needles, counts, few-shot "
    "examples) plus our own, generated offline at each length in the model's own tokens and scored like RULER "
    "(string match), greedy decoding; the table and results.json give RULER's mean over its tasks per length "
    "beside ours.", _eval, errors=(OptionError, ValueError)))


@app.command("config")
@click.argument("command", type=click.Choice(list(CONFIGS)))
def config(command: str) -> None:
    """Print a complete, commented config for COMMAND (sft, rl or eval): every key with its default
    and what it does. Save it, edit it, pass it with --config."""
    header = (f"dgrpo-train {command} --config FILE: every key with its default (`dgrpo-train config {command}`).\n"
              "Keys are also flags: --section.key=VALUE.")
    click.echo(render_toml([("", CONFIGS[command])], header=header), nl=False)


if __name__ == "__main__":
    app()
