"""Progress a person can watch: a run's bar (or log lines), and a sweep's line every 30 s.

The sweep's line reads the run folders (scaling.runs), so it works under any launcher, whichever process or
machine trains the runs.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from tqdm import tqdm

from scaling import runs

log = logging.getLogger("scaling.train")


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

    def __init__(self, rows: list, every: float = 30.0):
        super().__init__(daemon=True)
        self.rows, self.every, self.stop = rows, every, threading.Event()
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

    def report(self) -> str:
        flops, training, finished = self._done_flops()
        total = sum(r.hw_flops for r in self.rows)
        rate = (flops - self.done0) / max(time.time() - self.t0, 1e-9)
        eta = f"ETA {(total - flops) / rate / 60:.1f} min" if rate > 0 else "ETA after the first log point"
        return (f"[sweep] {finished}/{len(self.rows)} runs done, {100 * flops / total:.0f}% of the compute; "
                f"training: {', '.join(training) or '-'}; {eta}")

    def run(self):
        while not self.stop.wait(self.every):
            print(self.report(), flush=True)
