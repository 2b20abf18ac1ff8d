"""Evaluate a model on the suite: build the samples (lengths in the model's own tokens), generate
greedily with the `hf` or `vllm` engine, score with the reward functions, and write a table per
task and length (terminal), `results.json`, per-sample `samples.jsonl` and `scores.png`.
Must not train.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from trainer.config import ConfigError, EvalConfig, ModelConfig, RolloutConfig
from trainer.eval.tasks import (RULER_TASKS, SHORT, QASet, Sample, Task, essay_words, generate, longblocks_qa,
                                qa_from_rows, read_hotpotqa, read_squad, ruler_tasks)
from trainer.rewards import BUILTIN

console = Console(stderr=True)


@dataclass
class Suite:
    tasks: dict[str, Task]
    notes: dict[str, Any]  # what ran where RULER's data was missing, for results.json
    skipped: dict[str, str]


EXTRA = ("short_arithmetic", "short_recall", "longblocks_qa")


def _qa_sources(cfg: EvalConfig) -> dict[str, QASet]:
    sources: dict[str, QASet] = {}
    readers = {"squad": ("qa_1", read_squad), "hotpotqa": ("qa_2", read_hotpotqa)}
    for item in filter(None, (x.strip() for x in cfg.qa_source.split(","))):
        kind, sep, path = item.partition("=")
        if not sep or kind not in readers:
            raise ConfigError(f"--qa-source expects squad=PATH and/or hotpotqa=PATH, got {item!r}")
        if not Path(path).is_file():
            raise ConfigError(f"--qa-source {kind}: no file at {path}")
        name, reader = readers[kind]
        try:
            sources[name] = reader(path)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--qa-source {kind}={path}: not RULER's {kind} JSON layout ({exc})") from None
    return sources


def select_tasks(cfg: EvalConfig) -> Suite:
    qa_rows: list[dict[str, Any]] = []
    if cfg.qa_data:
        from trainer.config import DataSource
        from trainer.data import load_rows

        rows = load_rows(DataSource(path=cfg.qa_data))
        missing = {"document", "question", "answer"} - set(rows.column_names)
        if missing:
            raise ConfigError(f"--qa-data {cfg.qa_data}: missing column(s) {sorted(missing)}")
        qa_rows = [{k: r[k] for k in ("document", "question", "answer")} for r in rows]
    if cfg.haystack not in ("", "noise") and not cfg.haystack.startswith("local:"):
        raise ConfigError(f"haystack must be 'noise' or 'local:PATH', got {cfg.haystack!r}")
    essay = essay_words(cfg.haystack) if cfg.haystack.startswith("local:") else None
    qa = _qa_sources(cfg)
    for name in ("qa_1", "qa_2"):
        if name not in qa and qa_rows:
            qa[name] = qa_from_rows(qa_rows, cfg.qa_data)
    ruler = ruler_tasks(essay, qa.get("qa_1"), qa.get("qa_2"))
    extra: dict[str, Task] = {**SHORT, **({"longblocks_qa": longblocks_qa(qa_rows)} if qa_rows else {})}
    tasks: dict[str, Task] = {}
    skipped: dict[str, str] = {}
    for name in filter(None, (x.strip() for x in cfg.tasks.split(","))):
        if name in ("ruler", "extra"):
            tasks.update(ruler if name == "ruler" else extra)
            if name == "ruler":
                skipped.update({t: "no QA data: --qa-source squad=PATH,hotpotqa=PATH or --qa-data" for t in RULER_TASKS
                                if t not in ruler})
        elif name in ruler or name in extra:
            tasks[name] = {**ruler, **extra}[name]
        elif name in ("qa_1", "qa_2"):
            raise ConfigError(f"task {name} needs --qa-source (squad=PATH,hotpotqa=PATH) or --qa-data (our shards)")
        elif name == "longblocks_qa":
            raise ConfigError("task longblocks_qa needs --qa-data (parquet with document, question, answer)")
        else:
            raise ConfigError(f"unknown task {name!r}; known: ruler, extra, {', '.join([*RULER_TASKS, *EXTRA])}")
    fallback = sorted(t for t, task in tasks.items() if task.meta.get("fallback"))
    essay_note = (cfg.haystack if essay else
                  "noise: RULER's essay haystack is Paul Graham's essays; pass them with --haystack local:PATH")
    notes = {"essay_haystack": essay_note, "essay_tasks_on_noise": fallback,
             "qa_source": {t: tasks[t].meta["source"] for t in ("qa_1", "qa_2") if t in tasks}}
    return Suite(tasks, notes, skipped)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    try:
        lengths = sorted({int(x) for x in cfg.lengths.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--lengths must be comma-separated integers, got {cfg.lengths!r}") from None
    suite = select_tasks(cfg)  # every option checked before torch and the model load (a mistake is a one-line error at once)
    import torch

    from trainer.model import load_causal_lm, load_tokenizer
    from trainer.rollout import HFEngine, VLLMEngine

    if suite.notes["essay_tasks_on_noise"] and cfg.haystack != "noise":
        console.print(f"[yellow]warning:[/] {', '.join(suite.notes['essay_tasks_on_noise'])} use RULER's essay haystack "
                      "(Paul Graham's essays), which cannot be downloaded here: they run on the noise haystack. Pass "
                      "the essays with --haystack local:PATH to compare with published RULER numbers.")
    for name, why in suite.skipped.items():
        console.print(f"[yellow]warning:[/] {name} skipped ({why})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_cfg = ModelConfig(path=cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                            gradient_checkpointing=False)
    tokenizer = load_tokenizer(model_cfg)
    samples: list[Sample] = []
    with console.status("building prompts"):
        for name, task in suite.tasks.items():
            for length in (lengths if task.sized else [0]):
                samples += generate(name, task, tokenizer, length, cfg.samples, seed=cfg.seed)
    max_new = max(s.max_new_tokens for s in samples)
    sampling = RolloutConfig(group_size=1, max_new_tokens=max_new, temperature=0.0)
    if cfg.engine == "hf":
        lm = load_causal_lm(model_cfg, device).eval()
        engine: HFEngine | VLLMEngine = HFEngine(lm, tokenizer, sampling)
    elif cfg.engine == "vllm":
        engine = VLLMEngine(cfg.model, tokenizer, sampling, dtype=cfg.dtype, gpu_memory_utilization=0.85 if device.type == "cuda" else 0.3,
                            seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
    else:
        raise ConfigError(f"--engine must be hf or vllm, got {cfg.engine!r}")

    records = []
    started = time.perf_counter()
    progress = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)
    with progress:
        bar = progress.add_task("eval", total=len(samples))
        for sample in samples:
            engine.sampling.max_new_tokens = sample.max_new_tokens
            [[rollout]] = engine.generate([sample.prompt_ids], [cfg.seed])
            text = tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
            score = BUILTIN[sample.metric](text, sample.references, {})
            kept = {k: v for k, v in asdict(sample).items() if k not in ("prompt", "prompt_ids")}
            records.append({**kept, "tokens": sample.tokens, "completion": text, "score": score})
            progress.advance(bar)
    return write_results(cfg, records, time.perf_counter() - started, suite)


def write_results(cfg: EvalConfig, records: list[dict[str, Any]], seconds: float, suite: Suite | None = None) -> dict[str, Any]:
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    measured: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[r["task"]][r["length"]].append(r["score"])
        measured[r["task"]][r["length"]].append(r["tokens"])
    scores = {task: {str(length): sum(v) / len(v) for length, v in sorted(by_len.items())} for task, by_len in cells.items()}
    tokens = {task: {str(length): sum(v) / len(v) for length, v in sorted(by_len.items())} for task, by_len in measured.items()}
    lengths = sorted({r["length"] for r in records if r["length"]})
    averages = {str(length): _mean([scores[t][str(length)] for t in scores if str(length) in scores[t]]) for length in lengths}
    ruler = [t for t in RULER_TASKS if t in scores]
    ruler_means = {str(length): _mean([scores[t][str(length)] for t in ruler if str(length) in scores[t]]) for length in lengths}
    results = {"model": cfg.model, "engine": cfg.engine, "config": asdict(cfg), "scores": scores, "mean_prompt_tokens": tokens,
               "average_by_length": averages, "ruler_tasks": ruler, "ruler_average_by_length": ruler_means if ruler else {},
               "skipped": suite.skipped if suite else {}, **(suite.notes if suite else {}),
               "samples_per_cell": cfg.samples, "seconds": seconds,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with (out / "samples.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    table = Table(title=f"{cfg.model} ({cfg.engine}), score by prompt length in the model's tokens")
    table.add_column("task")
    for length in lengths:
        table.add_column(f"{length:,}", justify="right")
    table.add_column("short", justify="right")
    for task, by_len in scores.items():
        cells_ = [f"{by_len[str(l)]:.3f}" if str(l) in by_len else "" for l in lengths]
        table.add_row(task, *cells_, f"{by_len['0']:.3f}" if "0" in by_len else "")
    if ruler:  # RULER reports the mean over its tasks per length
        table.add_row(f"[bold]RULER mean ({len(ruler)} tasks)", *[f"{ruler_means[str(l)]:.3f}" for l in lengths], "")
    table.add_row(f"[bold]average ({len([t for t in scores if any(str(l) in scores[t] for l in lengths)])} tasks)",
                  *[f"{averages[str(l)]:.3f}" for l in lengths], "")
    Console().print(table)
    results["plot"] = str(_plot(scores, lengths, out / "scores.png")) if lengths else None
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _plot(scores: dict[str, dict[str, float]], lengths: list[int], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for task, by_len in scores.items():
        points = [(l, by_len[str(l)]) for l in lengths if str(l) in by_len]
        if points:
            ax.plot(*zip(*points), marker="o", label=task)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
