"""Progress a person can watch: a run's bar (or log lines), and a sweep's display.

A sweep on a terminal shows one live display, redrawn in place: runs done, share of the compute, ETA, and a line
per run in training under it. Elsewhere (a log, CI) it prints one line every 30 s. Everything its processes print
(Hydra's per-job lines, JAX's platform notices, each run's log lines) goes to <results>/<sweep>/sweep.log; only
warnings and errors reach the screen too. The display reads the run folders (scaling.runs), so it works under any
launcher, whichever process or machine trains the runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from scaling import runs

log = logging.getLogger("scaling.train")
SWEEP_LOG = "sweep.log"
# Lines of the training processes that reach the screen: Python logging's warnings and errors (Hydra's job log
# format "[time][name][LEVEL] - ..."), Python warnings, tracebacks, and this project's one-line errors.
LOUD = re.compile(r"\]\[(WARNING|ERROR|CRITICAL)\]|^Traceback|^\S*(Error|Exception)\b|Warning: |^scaling[: ]|^\s+File \"")


def live_terminal() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


class Console:
    """The sweep's screen and log file: every line of the training processes goes to the file; loud ones (LOUD)
    to the screen as well, above the live display when there is one."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()
        self.block = 0  # lines of the live display now on the screen
        self.live = live_terminal()
        # set once the sweep is signalled or a run has met a storage failure (a full disk): what the processes
        # say after that (each run interrupted, torn-down writer threads) goes to the log, and the sweep says it
        # in one line
        self.stopping = False

    def log(self, line: str) -> None:
        """One line to the sweep's log, written whole or not at all: on a full disk the line is lost, the sweep
        goes on (its runs say, in one line each, what stopped them)."""
        with self.lock:
            if self.fd is not None:  # a launcher's lingering worker may still print after the sweep has ended
                with contextlib.suppress(OSError):
                    os.write(self.fd, (line + "\n").encode(errors="replace"))

    def child_line(self, line: str) -> None:
        self.log(line)
        if LOUD.search(line) and not self.stopping:
            self.say(line)
            if line.startswith("scaling: ") and runs.storage_words(line) is not None:
                self.stopping = True

    def say(self, line: str) -> None:
        """A line on the screen (stderr), above the live display."""
        with self.lock:
            self._clear()
            print(line, file=sys.stderr, flush=True)

    def draw(self, lines: list[str]) -> None:
        """Replace the live display with these lines (a terminal only)."""
        width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
        with self.lock:
            self._clear()
            sys.stderr.write("".join(line[:width] + "\n" for line in lines))
            sys.stderr.flush()
            self.block = len(lines)

    def _clear(self) -> None:
        if self.block:  # up to the display's first line, and clear to the end of the screen
            sys.stderr.write(f"\x1b[{self.block}F\x1b[J")
            self.block = 0

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


class RunProgress:
    """A tqdm bar on a terminal, plain log lines otherwise (train.progress: auto, bar, log or none)."""

    def __init__(self, mode: str, steps: int, start: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() and not os.environ.get("CI") else "log"
        self.mode, self.step = mode, start
        self.bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, leave=False) \
            if mode == "bar" else None

    def update(self, step: int, loss: float):
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.step = step

    def log(self, row: dict, members: int = 1):
        """One evaluation row (of the first of `members` runs trained together)."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", eval=f"{row['eval_loss']:.3f}",
                                 tok_s=f"{row['tokens_per_s'] or 0:.3g}")
        elif self.mode == "log":
            log.info("step %d  tokens %.3g  train %.4f  eval %.4f  lr %.3g  %s tok/s  %.0f s%s",
                     row["step"], row["tokens_seen"], row["train_loss"], row["eval_loss"], row["lr"],
                     f"{row['tokens_per_s']:.3g}" if row["tokens_per_s"] else "-", row["elapsed_s"],
                     f"  (first of {members} packed runs)" if members > 1 else "")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class SweepProgress(threading.Thread):
    """Every `every` seconds: how many of the sweep's runs are done, which are training and how far, and an ETA.
    The ETA divides the hardware FLOPs still to train by the FLOP rate achieved since the sweep started.
    rows: the sweep's planned runs (scaling.sweep_plan.PlannedRun)."""

    def __init__(self, rows: list, every: float = 30.0, console: Console | None = None):
        super().__init__(daemon=True)
        self.rows, self.stop, self.console = rows, threading.Event(), console
        self.live = console is not None and console.live
        self.every = 1.0 if self.live else every
        self.t0 = time.time()
        self.done0 = self._done_flops()[0]

    def _done_flops(self) -> tuple[float, list[str], int]:
        flops, training, finished, trunks = 0.0, [], 0, {}
        for r in self.rows:
            s = runs.read_summary(r.folder) or {}
            if s.get("status") in runs.FINISHED:
                flops, finished = flops + r.hw_flops, finished + 1
                continue
            step = runs.trained_steps(r.folder)
            if r.trunk is not None:  # a branch's history up to its fork is its trunk's
                trunk_step = runs.trained_steps(r.trunk)
                step = max(step, min(r.fork, trunk_step))
                if not s and (runs.read_summary(r.trunk) or {}).get("status") == "running":
                    trunks[r.trunk] = f"{r.model} trunk step {trunk_step}"
            flops += r.hw_flops * step / r.steps
            if s.get("status") == "running":
                training.append(f"{r.model} {r.tokens:.2g} tokens {100 * step / r.steps:.0f}%")
        return flops, [*trunks.values(), *training], finished

    def _state(self) -> tuple[str, list[str]]:
        flops, training, finished = self._done_flops()
        total = sum(r.hw_flops for r in self.rows)
        rate = (flops - self.done0) / max(time.time() - self.t0, 1e-9)
        eta = f"ETA {(total - flops) / rate / 60:.1f} min" if rate > 0 else "ETA after the first log point"
        return f"[sweep] {finished}/{len(self.rows)} runs done, {100 * flops / total:.0f}% of the compute; {eta}", \
            training

    def report(self) -> str:
        head, training = self._state()
        return f"{head.rsplit(';', 1)[0]}; training: {', '.join(training) or '-'};{head.rsplit(';', 1)[1]}"

    def run(self):
        while not self.stop.wait(self.every):
            self._show()

    def _show(self) -> None:
        if self.live:
            head, training = self._state()
            self.console.draw([head, *(f"  {t}" for t in training)])
        else:
            line = self.report()
            print(line, flush=True)
            if self.console is not None:
                self.console.log(line)

    def final(self) -> None:
        """The display's last state, left on the screen (one line)."""
        if self.live:
            self.console.draw([self.report()])
            self.console.block = 0
        else:
            self._show()
