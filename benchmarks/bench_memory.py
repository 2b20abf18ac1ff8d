"""The trainer's memory against sequence length, on CPU: peak RSS of one SFT step and one dGRPO
update of the prepared SmolLM2-135M-Instruct (its 49,152-token vocabulary is what the policy head
saves on) cut to its first layers, gradient checkpointing on, bf16 autocast over fp32 master weights
(as on the GPU), beside the same step with transformers' own loss (materialised logits) and TRL's
`SFTTrainer` / `GRPOTrainer` at the same shapes, each (method, length) in its own process:

    python benchmarks/bench_memory.py                      # 1k-16k tokens, every method
    python benchmarks/bench_memory.py --smoke              # 256 and 512 tokens, 1 layer: the script runs

Methods (`--methods`, comma-separated):
  sft-ours          `trainer.recipe.setup` + the SFT loop's loss (FusedLogprobLM: log-probs from the
                    last hidden states in chunks, no tokens x vocab logits), every token trained
  sft-transformers  the same setup and step with `causal_lm(input_ids, labels=input_ids).loss`
  sft-trl           TRL's SFTTrainer, one step on the same pre-tokenized sequence (needs `pip install trl`)
  rl-ours           `trainer.rl.policy_update` with a local teacher (the exact full-vocabulary KL in
                    the policy head, beta = 1), G = 2 rollouts of one sequence each, the completion the
                    last quarter of it
  rl-transformers   the same update from materialised logits: the student's and the teacher's logits
                    over the completion (`logits_to_keep`, as TRL does), log_softmax, the clipped
                    surrogate plus the full KL
  rl-trl            TRL's GRPOTrainer (beta = 0.04 against a reference model, the nearest it offers),
                    G = 2, the same prompt and completion lengths (min_new_tokens forces the length)

Every method takes one step before the measured one (AdamW's state then exists, as from step 2 of a
run on). Peak RSS: the process's VmHWM, reset (`/proc/self/clear_refs` 5) once the model, optimizer and data
are loaded, read after the step; "loaded" is the RSS at that reset, "step" the peak above it. The
fitted exponent b of step memory ~ length^b (least squares on log-log over the lengths >= 2k) and
what it predicts at 32k-128k are printed under the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

METHODS = ("sft-ours", "sft-transformers", "sft-trl", "rl-ours", "rl-transformers", "rl-trl")


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


class Meter:
    """RSS when the step starts (after a reset of the peak) and the peak during it."""

    def start(self) -> None:
        import gc

        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        self.loaded = status_mb("VmRSS")
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        return {"loaded_mb": self.loaded, "peak_mb": status_mb("VmHWM"), "step_mb": status_mb("VmHWM") - self.loaded,
                "seconds": time.perf_counter() - self.t0}


def sequence(length: int, vocab: int, seed: int = 0) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(100, vocab) for _ in range(length)]


def cut_model(source: str, out: Path, layers: int) -> Path:
    from trainer.recipes.quickstart import build_student

    return build_student(Path(source), out, layers)


# -- one method at one length, in this process -----------------------------------------------------------

def _setup(kind: str, args: argparse.Namespace, out: Path) -> tuple[Any, Any]:
    from trainer.config import RLConfig, SFTConfig, load_config
    from trainer.recipe import setup

    common = [f"--model.path={args.student}", "--model.dtype=bf16", "--model.gradient_checkpointing=true",
              "--model.attn_implementation=sdpa", f"--run.out={out}", "--run.tensorboard=false"]
    if kind == "sft":
        cfg = load_config(SFTConfig, None, common + ["--data.long=[{path='unused.parquet'}]"])
    else:
        cfg = load_config(RLConfig, None, common + [
            "--teacher.source=local", f"--teacher.path={args.teacher}", "--teacher.dtype=bf16", "--objective.beta=1.0",
            "--data.long=[{path='unused.parquet', target='answer'}]", "--optim.micro_batch_rollouts=1",
            "--rollout.save=false"])
    return cfg, setup(cfg, optimizer_steps=1)


def run_one(method: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (taskset)
    meter = Meter()
    with tempfile.TemporaryDirectory() as tmp:
        if method.endswith("-trl"):
            return trl_one(method, length, args, Path(tmp), meter)
        kind = method.split("-")[0]
        cfg, run = _setup(kind, args, Path(tmp) / "run")
        vocab = run.causal_lm.config.vocab_size
        ids = sequence(length, vocab)
        if kind == "sft":
            def step(ids: list[int]) -> float:
                x = torch.tensor([ids])
                with run.autocast():
                    if method == "sft-ours":
                        loss = -run.model(x, torch.arange(len(ids))[None]).logprobs.mean()
                    else:
                        loss = run.causal_lm(input_ids=x, labels=x).loss
                loss.backward()
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                return float(loss)

            step(ids[:64])  # warm-up: AdamW's state exists before the measured step, as from step 2 on
            meter.start()
            loss = step(ids)
            return {**meter.stop(), "loss": loss, "tokens": length}
        return rl_one(method, cfg, run, ids, meter)


def rl_one(method: str, cfg: Any, run: Any, ids: list[int], meter: Meter) -> dict[str, Any]:
    import torch

    from trainer.batch import Rollout, micro_batches
    from trainer.rl import policy_update
    from trainer.teacher import Teacher

    teacher = Teacher(cfg, run.device)
    warm = SimpleNamespace(rollouts=[Rollout(ids[:48], ids[48:64], None, True)], advantages=[1.0], valid=[True],
                           teacher_scores=[None])
    policy_update(cfg, run, warm, teacher)  # warm-up: AdamW's state exists before the measured update
    completion = len(ids) // 4
    rollouts = [Rollout(ids[:-completion], ids[-completion:], None, True, origin=f"rollout {g}") for g in range(2)]
    advantages, valid = [1.0, -1.0], [True, True]
    meter.start()
    if method == "rl-ours":
        batch = SimpleNamespace(rollouts=rollouts, advantages=advantages, valid=valid,
                                teacher_scores=teacher.score(rollouts))
        stats = policy_update(cfg, run, batch, teacher)
        return {**meter.stop(), "loss": stats.sums["loss"], "kl": stats.sums["kl_sum"] / stats.sums["tokens"],
                "tokens": len(ids) * 2}
    # the same update from materialised logits, one rollout per micro-batch as above
    eps, beta, loss_sum, kl_sum = cfg.objective.eps_low, cfg.objective.beta, 0.0, 0.0
    for mb in micro_batches(rollouts, advantages, valid, 1, run.device):
        keep = completion + 1
        with torch.no_grad(), run.autocast():
            teacher_logits = teacher.source.lm(input_ids=mb.input_ids, position_ids=mb.position_ids,
                                               logits_to_keep=keep).logits[:, :-1]
        with run.autocast():
            logits = run.causal_lm(input_ids=mb.input_ids, position_ids=mb.position_ids, logits_to_keep=keep).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        logq = torch.log_softmax(teacher_logits.float(), dim=-1)
        targets = mb.input_ids[:, -completion:]
        token_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
        ratio = torch.exp(token_logp - token_logp.detach())
        surrogate = -torch.minimum(ratio * mb.advantages, ratio.clamp(1 - eps, 1 + eps) * mb.advantages)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        loss = (surrogate + beta * kl).sum() / (2 * completion)
        loss.backward()
        loss_sum += float(loss)
        kl_sum += float(kl.sum())
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {**meter.stop(), "loss": loss_sum, "kl": kl_sum / (2 * completion), "tokens": len(ids) * 2}


def trl_one(method: str, length: int, args: argparse.Namespace, tmp: Path, meter: Meter) -> dict[str, Any]:
    try:
        import trl
    except ImportError:
        return {"error": "trl not installed (pip install trl)"}
    import datasets
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(args.student)
    ids = sequence(length, tokenizer.vocab_size)
    result: dict[str, Any] = {}

    class Measure(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            meter.start()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            result.update(meter.stop())

    # two steps, the second measured (AdamW's state exists then, as for ours)
    common = {"output_dir": str(tmp), "max_steps": 2, "gradient_checkpointing": True, "bf16": True, "use_cpu": True,
              "report_to": "none", "save_strategy": "no", "logging_steps": 1, "learning_rate": 1e-6,
              "dataloader_num_workers": 0, "model_init_kwargs": {"attn_implementation": "sdpa"}}
    if method == "sft-trl":
        config = trl.SFTConfig(**common, per_device_train_batch_size=1, max_length=length, packing=False)
        data = datasets.Dataset.from_list([{"input_ids": ids}] * 2)
        trainer = trl.SFTTrainer(model=args.student, args=config, train_dataset=data, processing_class=tokenizer,
                                 callbacks=[Measure()])
        result["tokens"] = length
    else:
        completion = length // 4
        prompt = tokenizer.decode(ids[: length - completion])
        fields = set(trl.GRPOConfig.__dataclass_fields__)
        wanted = {**common, "per_device_train_batch_size": 2, "num_generations": 2, "beta": 0.04,
                  "max_completion_length": completion, "max_prompt_length": length - completion, "use_vllm": False,
                  # the KV cache on (gradient checkpointing turns it off in the config; without it each new
                  # token re-reads the whole sequence)
                  "generation_kwargs": {"min_new_tokens": completion, "use_cache": True}}
        config = trl.GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
        data = datasets.Dataset.from_list([{"prompt": prompt}] * 4)
        trainer = trl.GRPOTrainer(model=args.student, reward_funcs=[lambda completions, **_: [float(len(c)) for c in completions]],
                                  args=config, train_dataset=data, processing_class=tokenizer, callbacks=[Measure()])
        result["tokens"] = 2 * (len(tokenizer(prompt)["input_ids"]) + completion)
    trainer.train()
    return result


# -- the table -----------------------------------------------------------------------------------------------

def fit(lengths: list[int], values: list[float]) -> tuple[float, float] | None:
    """(b, a) of log(value) = a + b log(length), least squares, or None with fewer than 2 points."""
    points = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return b, my - b * mx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="tokens per sequence")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--model", default="{smollm2}", help="the model the student and teacher are cut from")
    parser.add_argument("--student-layers", type=int, default=4)
    parser.add_argument("--teacher-layers", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="256 and 512 tokens, a 1-layer student and teacher")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="FILE", help="measure nothing: print the "
                        "table of the rows these --json files hold, together (runs of different methods or lengths)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        try:
            print(json.dumps(run_one(args.one, args.length, args)))
        except Exception as exc:  # noqa: BLE001 - a method that breaks is reported in its cell, not fatal
            print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}))
        return
    if args.from_json:
        rows = {}
        for file in args.from_json:
            for key, row in json.loads(file.read_text()).items():
                method, length = key.rsplit("@", 1)
                rows[method, int(length)] = row
        methods = [m for m in METHODS if any(k[0] == m for k in rows)]
        lengths = sorted({k[1] for k in rows})
        report(rows, methods, lengths, args)
        return
    if args.smoke:
        args.lengths, args.student_layers, args.teacher_layers = "256,512", 1, 1
    methods = [m for m in args.methods.split(",") if m]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    lengths = [int(n) for n in args.lengths.split(",")]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trainer.model import model_path

    source = model_path(args.model)
    root = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    student = cut_model(source, root / "student", args.student_layers)
    teacher = cut_model(source, root / "teacher", args.teacher_layers)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for length in lengths:
        for method in methods:
            out = subprocess.run([sys.executable, __file__, "--one", method, "--length", str(length), "--student",
                                  str(student), "--teacher", str(teacher)], capture_output=True, text=True, env=env)
            lines = out.stdout.strip().splitlines()
            try:
                rows[method, length] = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                rows[method, length] = {"error": f"exit {out.returncode}: {(out.stderr.strip().splitlines() or ['?'])[-1][:160]}"}
            r = rows[method, length]
            print(f"  {method} @ {length}: " + (r["error"] if "error" in r else
                  f"step {r['step_mb']:.0f} MB over {r['loaded_mb']:.0f} MB loaded, {r['seconds']:.1f} s"),
                  file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps({f"{m}@{n}": r for (m, n), r in rows.items()}, indent=2))
    report(rows, methods, lengths, args)


def report(rows: dict[tuple[str, int], dict[str, Any]], methods: list[str], lengths: list[int],
           args: argparse.Namespace) -> None:
    """The table, the fit and its predictions; a cell not measured (another run's subset) is left out."""
    import torch

    print(f"\ndevice: CPU, {os.cpu_count()} cores, {platform.machine()}; torch {torch.__version__}; student: "
          f"{args.model} cut to its first {args.student_layers} layer(s), teacher: first {args.teacher_layers}; "
          "gradient checkpointing on, bf16 autocast over fp32 master weights, AdamW; one process per cell")
    print("\n| method | tokens/seq | loaded (MB) | step peak over loaded (MB) | x ours | seconds | loss |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        ours = f"{method.split('-')[0]}-ours"
        for length in lengths:
            if (method, length) not in rows:
                continue
            r = rows[method, length]
            if "error" in r:
                print(f"| {method} | {length:,} | {r['error']} | | | | |")
                continue
            base = rows.get((ours, length), {}).get("step_mb")
            ratio = f"{r['step_mb'] / base:.2f}x" if base else "n/a"
            loss = f"{r['loss']:.4f}" if "loss" in r else ""
            print(f"| {method} | {length:,} | {r['loaded_mb']:.0f} | {r['step_mb']:.0f} | {ratio} | {r['seconds']:.1f} | {loss} |")
    print("\nfit of step memory ~ length^b over the lengths >= 2,048 (all of them when fewer than two), and "
          "what it predicts:")
    print("\n| method | b | 32k (GB) | 64k (GB) | 128k (GB) |")
    print("|---|---|---|---|---|")
    for method in methods:
        got = [(n, rows[method, n]["step_mb"]) for n in lengths if "step_mb" in rows.get((method, n), {})]
        use = [p for p in got if p[0] >= 2048] if len([p for p in got if p[0] >= 2048]) >= 2 else got
        f = fit([n for n, _ in use], [v for _, v in use])
        if f is None:
            print(f"| {method} | n/a | | | |")
            continue
        b, a = f
        predict = " | ".join(f"{math.exp(a + b * math.log(n)) / 1024:.1f}" for n in (32768, 65536, 131072))
        print(f"| {method} | {b:.2f} | {predict} |")


if __name__ == "__main__":
    main()
