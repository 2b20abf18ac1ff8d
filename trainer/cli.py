"""`dgrpo-train` command line: SFT cold start, dGRPO, and evaluation.
Must not hold training logic; each command calls one recipe of the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    help="dGRPO trainer: SFT cold start on a short/long token mixture, then GRPO's clipped objective plus "
    "on-policy distillation from a teacher, with fused kernels that never materialize the logits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


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
    from longblocks.options import OptionError
    from trainer.config import SFTConfig, check_paths, load_config

    try:
        cfg = load_config(SFTConfig, config, list(ctx.args))  # config and paths checked before torch and the model load
        check_paths(cfg)
        from trainer.sft import train

        train(cfg)
    except OptionError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def rl(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML run configuration.")] = None,
) -> None:
    """dGRPO: GRPO's clipped objective on group-relative rewards minus beta x KL(student || teacher) on the \
student's own rollouts.

    GRPO is `--objective.beta=0`; on-policy distillation is a reward with weight 0. Teachers: \
`--teacher.source=local --teacher.path=DIR` (exact full-vocabulary KL through the fused kernels), `served` \
(an OpenAI-compatible endpoint returning prompt log-probs, e.g. vLLM), or `precomputed` (log-probs stored with \
replayed rollouts, `--data.replay=DIR`). Rollouts with `--rollout.engine=hf` (transformers generate) or `vllm` \
(colocated). Overrides follow the config as `--section.key=value`.

    Runs in one process or with FSDP2 under `torchrun --nproc-per-node N`; re-running the same command resumes.
    """
    from longblocks.options import OptionError
    from trainer.config import RLConfig, check_paths, load_config

    try:
        cfg = load_config(RLConfig, config, list(ctx.args))  # config and paths checked before torch and the model load
        check_paths(cfg)
        from trainer.rl import train

        train(cfg)
    except OptionError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def eval(  # noqa: A001 - the command is named eval
    model: Annotated[str, typer.Option("--model", help="A save_pretrained folder (e.g. run.out/final) or Hub id.")],
    tasks: Annotated[str, typer.Option(help="ruler (RULER's 13 tasks: niah_single_1..3, niah_multikey_1..3, "
                                            "niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2), extra (ours: "
                                            "short_arithmetic, short_recall, longblocks_qa), or a comma list of names.")] = "ruler,extra",
    lengths: Annotated[str, typer.Option(help="Prompt lengths in the model's own tokens.")] = "4096,8192,16384",
    samples: Annotated[int, typer.Option(help="Samples per task and length.")] = 20,
    engine: Annotated[str, typer.Option(help="hf (transformers generate) or vllm.")] = "hf",
    out: Annotated[Path, typer.Option(help="Writes results.json, samples.jsonl, scores.png here.")] = Path("runs/eval"),
    seed: Annotated[int, typer.Option(help="Seeds every generated sample.")] = 0,
    haystack: Annotated[str, typer.Option(help="RULER's essay haystack (Paul Graham's essays): local:PATH to .txt/.md "
                                               "files or PaulGrahamEssays.json. Without it the essay tasks run on the "
                                               "noise haystack, with a warning and a note in results.json.")] = "",
    qa_source: Annotated[str, typer.Option(help="RULER's QA data: squad=PATH (SQuAD v2 dev JSON, qa_1) and/or "
                                                "hotpotqa=PATH (HotpotQA dev distractor JSON, qa_2).")] = "",
    qa_data: Annotated[str, typer.Option(help="Parquet with document/question/answer (our shards): longblocks_qa, and "
                                              "qa_1/qa_2 where --qa-source gives no file.")] = "",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp32.")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Run the model repository's own code.")] = False,
) -> None:
    """RULER's 13 synthetic tasks as RULER defines them (templates, answer prefixes, needles, counts,
    few-shot examples) plus our own tasks, generated offline at each length in the model's own
    tokens and scored like RULER (string match), greedy decoding; the table and results.json give
    RULER's mean over its tasks per length beside ours.
    """
    from trainer.config import ConfigError
    from trainer.eval.run import EvalConfig, evaluate

    try:
        evaluate(EvalConfig(model=model, tasks=tasks, lengths=lengths, samples=samples, engine=engine, out=str(out),
                            seed=seed, haystack=haystack, qa_source=qa_source, qa_data=qa_data, dtype=dtype,
                            trust_remote_code=trust_remote_code))
    except (ConfigError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
