"""Progress that shows in any terminal or log, for both command lines: live bars (rich) on a
terminal; elsewhere (a log file, `nohup`, CI, a notebook) one plain line per phase at its start,
every `interval` seconds (done/total, rate, ETA, the phase's counters) and at its end, on stderr;
nothing with `--quiet`. Standard library and rich only (the trainer imports it on the GPU image).
Must not hold stage or training logic.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_INTERVAL = 30.0  # seconds between plain progress lines (LONGBLOCKS_PROGRESS_EVERY)


class Progress(Protocol):
    """The one progress callback: `phase` names a bar (a stage may have several), `advance` moves
    it, `total` (once, when known) sizes it, `stats` are shown beside it; `done=1` ends the phase;
    `resumed=1` marks the advance as work a previous run did (counted, but not in the rate or ETA)."""

    def __call__(self, phase: str, advance: int, total: int | None, /, **stats: int) -> None: ...


def no_progress(phase: str, advance: int, total: int | None, /, **stats: int) -> None:
    """The callback used when a caller passes none, or with --quiet."""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def stats_text(stats: dict[str, Any], separator: str, *, spaced_names: bool = False) -> str:
    """A phase's counters as `name value` pairs (floats to 4 significant digits)."""
    def name(key: str) -> str:
        return key.replace("_", " ") if spaced_names else key

    return separator.join(f"{name(k)} {v:.4g}" if isinstance(v, float) else f"{name(k)} {v}" for k, v in stats.items())


@dataclass
class _Phase:
    started: float
    total: int | None = None
    done: int = 0
    before: int = 0  # of `done`, what earlier runs did (a resumed phase): not in the rate
    last: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


class PlainProgress:
    """Progress as plain lines: `stage: 40/120 (33%) 2.1/s, ETA 0:00:38 [0:00:19] kept 30 rejected 10`.
    With `heartbeat`, a phase that has not moved for `interval` seconds (a batch of long
    generations) still gets its line every `interval`, so a long wait never looks like a hang."""

    def __init__(self, write: Callable[[str], None], interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, heartbeat: bool = False) -> None:
        self.write, self.interval, self.clock = write, interval, clock
        self.phases: dict[str, _Phase] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        if heartbeat and interval > 0:
            threading.Thread(target=self._beat, daemon=True).start()

    def __call__(self, phase: str, advance: int, total: int | None, /, **stats: int) -> None:
        with self.lock:
            now = self.clock()
            ending = bool(stats.pop("done", 0))
            resumed = bool(stats.pop("resumed", 0))
            state = self.phases.get(phase)
            if state is None:
                state = self.phases[phase] = _Phase(started=now, last=now)
                self.write(f"{phase}: started" + (f", {total} to do" if total is not None else "")
                           + (f", {advance} done before" if resumed and advance else ""))
            if total is not None:
                state.total = total
            state.done += advance
            state.before += advance if resumed else 0
            state.stats.update(stats)
            if ending:
                self.write(self.line(phase, state, now, "done: "))
                del self.phases[phase]
            elif now - state.last >= self.interval:
                state.last = now
                self.write(self.line(phase, state, now))

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval / 2):
            with self.lock:
                now = self.clock()
                for phase, state in self.phases.items():
                    if now - state.last >= self.interval:
                        state.last = now
                        self.write(self.line(phase, state, now))

    def close(self) -> None:
        self.stopped.set()

    @staticmethod
    def line(phase: str, state: _Phase, now: float, prefix: str = "") -> str:
        elapsed = now - state.started
        rate = (state.done - state.before) / elapsed if elapsed > 0 else 0.0
        parts = [f"{phase}: {prefix}{state.done}" + (f"/{state.total}" if state.total else "")]
        if state.total:
            parts[0] += f" ({100 * state.done / state.total:.0f}%)"
        parts.append(f"{rate:.2f}/s")
        # An LLM stage hands outcomes over in input order, so one slow request holds back the count
        # of done inputs; its requests answered (`answered`, in the same units) say how far it is.
        answered = state.stats.get("answered")
        done, rate_done = (answered, answered / elapsed if elapsed > 0 else 0.0) if answered else (state.done, rate)
        if state.total and rate_done > 0 and done < state.total and not prefix:
            parts.append(f"ETA {_clock((state.total - done) / rate_done)}")
        parts.append(f"[{_clock(elapsed)}]")
        if state.stats:
            parts.append(stats_text(state.stats, " ", spaced_names=True))
        return " ".join(parts)


def interval_from_env() -> float:
    try:
        return float(os.environ.get("LONGBLOCKS_PROGRESS_EVERY", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


@contextmanager
def reporter(console: Any, *, quiet: bool = False, plain: bool | None = None,
             interval: float | None = None) -> Iterator[Progress]:
    """The progress callback for a command: nothing when `quiet`; rich bars on a terminal; plain
    lines (every `interval` seconds, LONGBLOCKS_PROGRESS_EVERY, 30 by default) otherwise or with
    `plain=True`."""
    if quiet:
        yield no_progress
        return
    if plain or (plain is None and not console.is_terminal):
        progress = PlainProgress(lambda line: print(line, file=sys.stderr, flush=True),
                                 interval_from_env() if interval is None else interval, heartbeat=True)
        try:
            yield progress
        finally:
            progress.close()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    columns = [TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with RichProgress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def update(phase: str, advance: int, total: int | None, /, **stats: Any) -> None:
            stats.pop("done", None)
            resumed = stats.pop("resumed", 0)
            if phase not in tasks:  # a resumed phase starts where it was: not one leap in rich's speed
                start = advance if resumed else 0
                tasks[phase] = bars.add_task(phase, total=total, stats="", completed=start)
                advance -= start
            elif total is not None:
                bars.update(tasks[phase], total=total)
            fields = stats_text(stats, "  ")
            bars.update(tasks[phase], advance=advance, **({"stats": fields} if fields else {}))

        yield update
