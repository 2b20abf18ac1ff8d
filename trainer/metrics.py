"""Metrics sinks: JSONL (always), TensorBoard and W&B when installed and asked, a PNG plot of the
loss at the end. Must not compute metrics: the recipes pass numbers in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, out: Path, *, enabled: bool, tensorboard: bool, wandb: bool, project: str, config: dict) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = self.run = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                self.tb = None
        if wandb:
            import wandb as wandb_module

            self.run = wandb_module.init(project=project, config=config, dir=str(out))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                if self.tb is not None:
                    self.tb.add_scalar(key, value, step)
        if self.run is not None:
            self.run.log(values, step=step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines a killed run wrote after its last checkpoint, and a last line it
        was killed while writing (torn: not JSON)."""
        if self.enabled and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line: its step is rerun and logged again
                if isinstance(row, dict) and row.get("step", step + 1) <= step:
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))

    def close(self, plot_keys: tuple[str, ...] = ("loss",)) -> Path | None:
        if not self.enabled:
            return None
        if self.tb is not None:
            self.tb.close()
        if self.run is not None:
            self.run.finish()
        return plot_metrics(self.path, plot_keys)


def plot_metrics(path: Path, keys: tuple[str, ...]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(l) for l in path.read_text().splitlines() if l]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
