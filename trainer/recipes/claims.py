"""The paper's three claims on a task built to separate the arms, at CPU scale or larger
(`benchmarks/claims_cpu.py` runs the CPU scale; `python -m trainer.recipes.replicate --scale
claims-gpu` the larger one). The task keeps the structure of LongBlocks at toy size:

- the answer is three value tokens copied from a `key a b c` span, and the reward is their exact
  match: sparse (chance 1/512; a student that has the format but not the retrieval scores ~0);
- the span sits in the first third of a document of 60-90 filler words, the question at its end:
  the evidence is far from the question for a 2-layer model;
- the teacher is good but not perfect: it is trained on labels that, when the first value is v6 or
  v7 (a quarter of the rows), shift the third value by one in 60% of the rows. It learns that
  distribution: its greedy answer is wrong on that quarter while its samples are right 40% of the
  time there. SFT imitating it is capped near its greedy accuracy (~0.75); a reward can lift the
  student past it (under the KL-regularised objective the optimum is proportional to
  teacher x exp(reward / beta), whose mode is the right answer when the teacher gives it 40%);
- the students' SFT data are the teacher's sampled responses (a `response_teacher` column, as
  LongBlocks' `response_<model>`), never the ground truth, which only the reward sees.

Arms, from each seed's warm start (SFT on teacher responses) with the same budget per step
(`prompts_per_step x group_size` sampled sequences; SFT continued trains on as many teacher
responses): SFT continued, GRPO (beta 0), on-policy distillation (reward weight 0), dGRPO
(beta 1, reward 1), and dGRPO from the untrained student. Held-out greedy accuracy every
`eval_every` steps (the runs are resumed in chunks: the learning rate is constant after warm-up,
so a chunked run is the uninterrupted one). The claims and their primary measures:

1. SFT warm start + dGRPO beats SFT alone: final accuracy, dGRPO - SFT continued.
2. dGRPO is more sample-efficient and stable than GRPO under sparse rewards: the mean held-out
   accuracy over the evaluation points (area under the curve), dGRPO - GRPO.
3. RL without the warm start degrades: final accuracy, dGRPO - dGRPO without warm start.

Each is a paired comparison (the arms share the seed's initial student and warm start): mean
difference, 95% t-interval, two-sided p. Must not change any recipe: it only calls
`trainer.sft.train` and `trainer.rl.train` with configurations.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from trainer.recipes.family import PAPER_ARMS
from trainer.recipes.quickstart import metrics

ARMS = ("sft_continued", "grpo", "opd", "dgrpo", "dgrpo_cold")
LABELS = {"sft_continued": "SFT continued", "grpo": "GRPO (beta 0)", "opd": "on-policy distillation (reward 0)",
          "dgrpo": "dGRPO (beta 1, reward 1)", "dgrpo_cold": "dGRPO without warm start"}
# claim -> (name, arm, baseline, measure)
CLAIMS = {
    1: ("SFT warm start + dGRPO beats SFT alone", "dgrpo", "sft_continued", "final"),
    2: ("dGRPO more sample-efficient than GRPO (sparse reward)", "dgrpo", "grpo", "auc"),
    3: ("RL without the warm start degrades", "dgrpo", "dgrpo_cold", "final"),
}
VALUES = [f"v{i}" for i in range(8)]
TRAP = ("v6", "v7")  # first value in TRAP: the teacher's labels shift the last value...
TEACHER_ERROR = 0.6  # ...in this fraction of those rows
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass(frozen=True)
class Scale:
    words: tuple[int, int]  # filler words per document (min, max)
    filler: int  # size of the filler vocabulary
    teacher: tuple[int, int]  # hidden, layers
    student: tuple[int, int]
    teacher_rows: int
    teacher_steps: int
    warm_steps: int
    steps: int  # optimizer steps per arm
    eval_every: int
    prompts_per_step: int
    group_size: int
    eval_n: int  # held-out prompts per evaluation
    lr: float  # SFT (teacher, warm starts, SFT continued)
    rl_lr: float  # every RL arm


# Sized by probes on 2 cores: a 128x2 teacher learns the retrieval in ~150-250 steps of 32 rows at
# lr 3e-3 (at 1e-2, or 96x2 on 40-60 words, it had not after 300); 70 warm-start steps of 64 rows
# leave a student part of the way (the sparse-reward regime), 40 steps per arm fit the time. RL at
# 3e-3 or 1e-3 drove GRPO to reward 0 within 10 steps (Adam's sign-like steps on a noisy gradient;
# no group varies after that); at 3e-4 GRPO and dGRPO both climbed (pilot seed 1001, 20 steps).
CPU = Scale((60, 90), 40, (128, 2), (128, 2), 4000, 300, 70, 40, 10, 8, 8, 128, 3e-3, 3e-4)
SMOKE = Scale((20, 30), 40, (32, 1), (32, 1), 200, 2, 1, 2, 1, 2, 2, 8, 1e-2, 1e-3)
# Larger for a GPU: longer documents, bigger models, more steps; the same task and plan.
GPU = Scale((400, 600), 400, (256, 4), (128, 2), 20000, 600, 20, 200, 20, 16, 8, 256, 1e-3, 1e-4)
SCALES = {"cpu": CPU, "smoke": SMOKE, "gpu": GPU}


# -- the task ---------------------------------------------------------------------------------------
def tokenizer_dir(out: Path, scale: Scale) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if (out / "tokenizer.json").exists():
        return out
    words = SPECIALS + ["user", "assistant", "system", "what", "is", "the", "key", "?", "[UNK]"] + \
        [f"f{i}" for i in range(scale.filler)] + VALUES
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def rows(n: int, seed: int, scale: Scale) -> list[dict[str, str]]:
    """LongBlocks-shaped rows: `key a b c` in the first third of the document, the question after it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [f"f{rng.randrange(scale.filler)}" for _ in range(rng.randint(*scale.words))]
        answer = " ".join(rng.choice(VALUES) for _ in range(3))
        words.insert(rng.randint(0, len(words) // 3), f"key {answer}")
        out.append({"id": f"{seed}-{i}", "document": " ".join(words), "source": "synthetic", "language": "en",
                    "question": "what is the key ?", "answer": answer})
    return out


def teacher_label(answer: str, rng: random.Random) -> str:
    """The teacher's training label: the last value shifted by one in TEACHER_ERROR of TRAP rows."""
    a, b, c = answer.split()
    if a in TRAP and rng.random() < TEACHER_ERROR:
        c = VALUES[(VALUES.index(c) + 1) % len(VALUES)]
    return f"{a} {b} {c}"


def is_trap(answer: str) -> bool:
    return answer.split()[0] in TRAP


def write(path: Path, table: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


def model_dir(out: Path, tokenizer: Path, size: tuple[int, int], seed: int) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer)
    hidden, layers = size
    config = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=max(16, hidden // 4),
                         max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _answers(model: Path, task_rows: list[dict[str, str]], *, temperature: float, seed: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import RolloutConfig
    from trainer.data import template_ids
    from trainer.rollout import HFEngine

    lm, tok = AutoModelForCausalLM.from_pretrained(model), AutoTokenizer.from_pretrained(model)
    prompts = [template_ids(tok, [{"role": "user", "content": f"{r['document']}\n\n{r['question']}"}],
                            add_generation_prompt=True) for r in task_rows]
    engine = HFEngine(lm, tok, RolloutConfig(group_size=1, max_new_tokens=4, temperature=temperature,
                                             prompts_per_batch=128))
    torch.manual_seed(seed)
    groups = engine.generate(prompts, [seed * 1_000_003 + i for i in range(len(prompts))])
    return [tok.decode(g[0].completion_ids, skip_special_tokens=True).strip() for g in groups]


def evaluate(model: Path, scale: Scale) -> dict[str, float]:
    """Greedy exact match on the scale's held-out rows (ground truth), overall and on the trap quarter."""
    from trainer.rewards import exact_match

    held_out = rows(scale.eval_n, 4242, scale)
    hits = [exact_match(a, r["answer"]) for a, r in zip(_answers(model, held_out, temperature=0.0, seed=0), held_out)]
    trap = [h for h, r in zip(hits, held_out) if is_trap(r["answer"])]
    return {"accuracy": statistics.fmean(hits), "trap_accuracy": statistics.fmean(trap) if trap else float("nan")}


def with_teacher_responses(teacher: Path, source: Path, out: Path, seed: int) -> Path:
    """`source`'s rows plus `response_teacher`: the teacher's sampled (temperature 1) answer."""
    import pyarrow.parquet as pq

    if out.exists():
        return out
    table = pq.read_table(source).to_pylist()
    for row, response in zip(table, _answers(teacher, table, temperature=1.0, seed=seed)):
        row["response_teacher"] = response
    return write(out, table)


# -- the arms ---------------------------------------------------------------------------------------
def _sft(model: Path, data: Path, out: Path, steps: int, seed: int, scale: Scale, tokens_per_step: int,
         target: str = "response_teacher") -> Path:
    from trainer.config import SFTConfig, load_config
    from trainer.sft import train

    train(load_config(SFTConfig, None, [
        f"--model.path={model}", f"--data.long=[{{path='{data}', target='{target}'}}]", "--data.short_fraction=0.0",
        "--data.max_seq_len=2048", f"--optim.lr={scale.lr}", f"--optim.warmup_steps={min(5, steps)}",
        "--optim.min_lr_ratio=1.0", f"--optim.steps={steps}", f"--optim.tokens_per_step={tokens_per_step}",
        f"--run.out={out}", f"--run.seed={seed}", f"--data.seed={seed}", f"--run.save_every={steps}",
        "--run.tensorboard=false", "--model.gradient_checkpointing=false"]))
    return out / "final"


def _rl(model: Path, teacher: Path, data: Path, out: Path, arm: str, steps: int, seed: int, scale: Scale) -> Path:
    from trainer.config import RLConfig, load_config
    from trainer.rl import train

    beta, weight = PAPER_ARMS[arm]
    train(load_config(RLConfig, None, [
        f"--model.path={model}", f"--data.long=[{{path='{data}'}}]", f"--data.seed={seed}", f"--run.seed={seed}",
        f"--teacher.source={'local' if beta else 'none'}", f"--teacher.path={teacher}", f"--objective.beta={beta}",
        f"--rewards=[{{name='exact_match', weight={weight}}}]", f"--rollout.prompts_per_step={scale.prompts_per_step}",
        f"--rollout.group_size={scale.group_size}", "--rollout.max_new_tokens=4", "--rollout.save=false",
        f"--optim.lr={scale.rl_lr}", "--optim.warmup_steps=5", "--optim.min_lr_ratio=1.0", f"--optim.steps={steps}",
        f"--optim.micro_batch_rollouts={scale.prompts_per_step * scale.group_size}", f"--run.out={out}",
        f"--run.save_every={steps}", "--run.tensorboard=false", "--model.gradient_checkpointing=false"]))
    return out / "final"


def _curve(out: Path, start: dict[str, float], step_fn: Callable[[int], Path], scale: Scale) -> list[dict[str, Any]]:
    """Held-out accuracy at step 0 and every `eval_every` steps, training in chunks; resumable
    (each evaluated point is kept in `curve.json`)."""
    path = out / "curve.json"
    curve = json.loads(path.read_text()) if path.exists() else [{"step": 0, **start}]
    for upto in range(scale.eval_every, scale.steps + 1, scale.eval_every):
        if any(p["step"] == upto for p in curve):
            continue
        curve.append({"step": upto, **evaluate(step_fn(upto), scale)})
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(curve, indent=1))
    return curve


def one_seed(root: str, seed: int, scale: Scale) -> dict[str, Any]:
    """Every arm of one seed (a worker process: one torch thread)."""
    import torch

    torch.set_num_threads(1)
    root_ = Path(root)
    tok, teacher, data = root_ / "tokenizer", root_ / "teacher" / "final", root_ / "data"
    tokens_per_step = scale.prompts_per_step * scale.group_size * _mean_tokens(scale)
    student = model_dir(root_ / f"student_init-{seed}", tok, scale.student, 100 + seed)
    warm = root_ / f"warm-{seed}" / "final"
    if not (warm / "config.json").exists():
        _sft(student, data / "warm.parquet", root_ / f"warm-{seed}", scale.warm_steps, seed, scale, tokens_per_step)
    result: dict[str, Any] = {"seed": seed, "arms": {}}
    starts = {"warm": evaluate(warm, scale), "cold": evaluate(student, scale)}
    result["warm"] = starts["warm"]
    for arm in ARMS:
        out = root_ / f"{arm}-{seed}"
        start_model, start = (student, starts["cold"]) if arm == "dgrpo_cold" else (warm, starts["warm"])
        if arm == "sft_continued":
            step_fn = lambda upto, out=out: _sft(warm, data / "rl.parquet", out, upto, seed, scale, tokens_per_step)  # noqa: E731
        else:
            step_fn = lambda upto, out=out, arm=arm, m=start_model: _rl(m, teacher, data / "rl.parquet", out, arm,  # noqa: E731
                                                                         upto, seed, scale)
        curve = _curve(out, start, step_fn, scale)
        result["arms"][arm] = {"curve": curve, "train_reward": [] if arm == "sft_continued" else
                               [r["reward/exact_match/mean"] for r in metrics(out)]}
    return result


def _mean_tokens(scale: Scale) -> int:
    """Tokens of one sampled sequence (template ~12, document, `key a b c`, question 4, answer 4)."""
    return int(sum(scale.words) / 2 + 4 + 4 + 4 + 12)


def prepare(root: Path, scale: Scale) -> dict[str, Any]:
    """Tokenizer, data and the teacher (trained once, shared by every seed)."""
    tok = tokenizer_dir(root / "tokenizer", scale)
    data = root / "data"
    if not (data / "teacher.parquet").exists():
        rng = random.Random(7)
        write(data / "teacher.parquet", [{**r, "answer": teacher_label(r["answer"], rng)}
                                          for r in rows(scale.teacher_rows, 1, scale)])
    for name, n, seed in (("warm_prompts", 2000, 2), ("rl_prompts", 2000, 3)):
        if not (data / f"{name}.parquet").exists():
            write(data / f"{name}.parquet", rows(n, seed, scale))
    teacher = root / "teacher" / "final"
    if not (teacher / "config.json").exists():
        init = model_dir(root / "teacher_init", tok, scale.teacher, 0)
        _sft(init, data / "teacher.parquet", root / "teacher", scale.teacher_steps, 0, scale,
             32 * _mean_tokens(scale), target="answer")
    with_teacher_responses(teacher, data / "warm_prompts.parquet", data / "warm.parquet", seed=11)
    with_teacher_responses(teacher, data / "rl_prompts.parquet", data / "rl.parquet", seed=12)
    path = root / "teacher.json"
    if not path.exists():
        import pyarrow.parquet as pq

        sft_rows = pq.read_table(data / "warm.parquet").to_pylist()
        path.write_text(json.dumps({**evaluate(teacher, scale),
                                    "responses_correct": statistics.fmean(r["response_teacher"] == r["answer"]
                                                                          for r in sft_rows)}))
    return json.loads(path.read_text())


def run(root: Path, scale: Scale, seeds: list[int], jobs: int = 1, name: str = "claims") -> dict[str, Any]:
    """Every arm for every seed (`jobs` seeds at a time, one torch thread each); writes `{name}.json`.
    Rerunning resumes: finished evaluations are kept, a killed run resumes from its checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"scale": asdict(scale), "teacher": prepare(root, scale), "seeds": seeds}
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(one_seed, [str(root)] * len(seeds), seeds, [scale] * len(seeds)))
    else:
        results = [one_seed(str(root), seed, scale) for seed in seeds]
    report["runs"] = results
    (root / f"{name}.json").write_text(json.dumps(report, indent=1))
    return report


def seed_list(text: str) -> list[int]:
    """`0-9` or `0,1,2`."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


# -- analysis ---------------------------------------------------------------------------------------
def measure(run: dict[str, Any], arm: str, kind: str) -> float:
    curve = run["arms"][arm]["curve"]
    if kind == "final":
        return curve[-1]["accuracy"]
    return statistics.fmean(p["accuracy"] for p in curve if p["step"] > 0)  # auc: mean over evaluations


def _half_width(values: list[float]) -> float:
    """Half the 95% t-interval of the mean of `values` (0 for fewer than two)."""
    from scipy import stats

    n = len(values)
    return stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of a - b over seeds, its 95% t-interval and the two-sided paired-t p-value."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else float("nan")
    if n < 2 or sd == 0:
        return {"n": n, "mean": mean, "sd": sd, "low": mean, "high": mean, "p": float("nan") if n < 2 else 0.0}
    half = _half_width(d)
    p = 2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "p": p}


def seeds_for_power(effect: float, sd: float, power: float = 0.8, most: int = 200) -> int | None:
    """Seeds a two-sided paired t-test at 5% needs to detect `effect` with `power` (noncentral t);
    None if not within `most`."""
    from scipy import stats

    if not sd or not effect or sd != sd:
        return None
    for n in range(3, most + 1):
        crit = stats.t.ppf(0.975, n - 1)
        nc = abs(effect) / sd * math.sqrt(n)
        if stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) >= power:
            return n
    return None


def analyse(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    for number, (name, arm, base, kind) in CLAIMS.items():
        a = [measure(r, arm, kind) for r in report["runs"]]
        b = [measure(r, base, kind) for r in report["runs"]]
        test = paired(a, b)
        out[number] = {"name": name, "arm": arm, "baseline": base, "measure": kind, "arm_values": a,
                       "baseline_values": b, **test, "seeds_for_80_power": seeds_for_power(test["mean"], test["sd"])}
    return out


def verdict(claim: dict[str, Any]) -> str:
    if claim["n"] < 2 or claim["p"] != claim["p"]:
        return "not tested"
    if claim["low"] > 0:
        return "shown"
    if claim["high"] < 0:
        return "reversed"
    return "not shown"


def table(report: dict[str, Any]) -> str:
    """The markdown tables: arms (mean [95% interval] over seeds), then the paired differences."""
    runs = report["runs"]
    lines = [f"teacher: greedy {report['teacher']['accuracy']:.3f} (trap quarter "
             f"{report['teacher']['trap_accuracy']:.3f}), its sampled SFT responses correct "
             f"{report['teacher']['responses_correct']:.3f}; warm start {_ci([r['warm']['accuracy'] for r in runs])}; "
             f"{len(runs)} seeds", "",
             "| arm | final held-out accuracy | on the trap quarter | mean over evaluations (AUC) | train reward, last 10 steps |",
             "|---|---|---|---|---|"]
    for arm in ARMS:
        final = [measure(r, arm, "final") for r in runs]
        trap = [r["arms"][arm]["curve"][-1]["trap_accuracy"] for r in runs]
        auc = [measure(r, arm, "auc") for r in runs]
        rewards = [statistics.fmean(r["arms"][arm]["train_reward"][-10:]) for r in runs if r["arms"][arm]["train_reward"]]
        lines.append(f"| {LABELS[arm]} | {_ci(final)} | {_ci(trap)} | {_ci(auc)} | {_ci(rewards) if rewards else 'n/a (SFT)'} |")
    lines += ["", "| claim | primary measure | paired difference [95% t-interval] | p | seeds for 80% power at this effect | reading |",
              "|---|---|---|---|---|---|"]
    for number, c in analyse(report).items():
        need = c["seeds_for_80_power"]
        lines.append(f"| {number}. {c['name']} | {'final accuracy' if c['measure'] == 'final' else 'AUC'}: "
                     f"{c['arm']} - {c['baseline']} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] | "
                     f"{c['p']:.3g} | {need if need else '> 200'} | {verdict(c)} |")
    return "\n".join(lines)


def _ci(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    half = _half_width(values)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def plot(report: dict[str, Any], out: Path, prefix: str = "claims") -> list[Path]:
    """One picture per claim: held-out accuracy and training reward against steps, the mean and
    95% band over seeds of the claim's two arms (the teacher's greedy accuracy dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, paths = report["runs"], []
    for number, (name, arm, base, _) in CLAIMS.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for key in (base, arm):
            for ax, series in ((axes[0], "curve"), (axes[1], "train_reward")):
                if series == "curve":
                    steps = [p["step"] for p in runs[0]["arms"][key]["curve"]]
                    ys = [[p["accuracy"] for p in r["arms"][key]["curve"]] for r in runs]
                else:
                    ys = [r["arms"][key]["train_reward"] for r in runs if r["arms"][key]["train_reward"]]
                    if not ys:
                        continue
                    steps = list(range(1, len(ys[0]) + 1))
                width = min(len(y) for y in ys)
                mean = [statistics.fmean(y[i] for y in ys) for i in range(width)]
                half = [_half_width([y[i] for y in ys]) for i in range(width)]
                line, = ax.plot(steps[:width], mean, label=LABELS[key])
                ax.fill_between(steps[:width], [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                                alpha=0.2, color=line.get_color())
        axes[0].axhline(report["teacher"]["accuracy"], ls="--", color="grey", label="teacher (greedy)")
        axes[0].set_ylabel("held-out greedy accuracy")
        axes[1].set_ylabel("training reward (exact match of samples)")
        for ax in axes:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"claim {number}: {name} (mean and 95% band over {len(runs)} seeds)", fontsize=10)
        fig.tight_layout()
        path = out / f"{prefix}_claim{number}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
