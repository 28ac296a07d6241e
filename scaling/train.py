"""Training a grid cell through the one engine (scaling.engine): a run, a pack of runs, or a row of WSD branches.

Each function skips finished runs and resumes interrupted ones (scaling.runs); a run that raises is marked
failed with its traceback in error.txt, and relaunching reruns it only with rerun_failed=true.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from scaling import branching, engine, packing, runs
from scaling import plan as plans
from scaling.config import ConfigError, validate

log = logging.getLogger("scaling.train")


def run(cfg: DictConfig, folder: Path | None = None, fork: engine.Fork | None = None,
        save_forks: tuple[int, ...] = (), extra_points: tuple[int, ...] = ()) -> dict:
    """Train one run described by cfg; return its summary.

    folder: where the run lives (default runs.run_dir(cfg)); fork: start from another run's saved state;
    save_forks: steps at which to keep a copy of the state for runs branched off this one (also evaluated there,
    as are extra_points).
    """
    validate(cfg)
    folder = folder or runs.run_dir(cfg)
    previous = runs.read_summary(folder)
    if runs.is_settled(previous, cfg.rerun_failed):
        log.info("skip %s: %s", folder, previous["status"])
        return previous
    runs.prepare(folder, cfg)
    return _train([cfg], [folder], folder, fork=fork, save_forks=save_forks, extra_points=extra_points)[0]


def run_pack(cfg: DictConfig) -> list[dict]:
    """Train the unfinished members of cfg's pack (scaling.packing) together; return every member's summary."""
    validate(cfg)
    everyone = packing.members(cfg)
    done = {i: s for i, m in enumerate(everyone)
            if runs.is_settled(s := runs.read_summary(runs.run_dir(m)), cfg.rerun_failed)}
    todo = [i for i in range(len(everyone)) if i not in done]
    if len(todo) == 1:  # alone it is a plain run, bitwise the separate one
        done[todo[0]] = run(everyone[todo[0]])
    elif todo:
        cfgs = [everyone[i] for i in todo]
        folders = [runs.run_dir(c) for c in cfgs]
        for folder, c in zip(folders, cfgs):
            runs.prepare(folder, c)
        done.update(zip(todo, _train(cfgs, folders, runs.pack_dir(folders))))
    return [done[i] for i in range(len(everyone))]


def run_branches(cfg: DictConfig) -> list[dict]:
    """Train every budget of cfg.train.branch_tokens not yet finished (scaling.branching); return their
    summaries."""
    validate(cfg)
    trunk, branches = branching.plan(cfg)
    folder = runs.trunk_dir(cfg, trunk)
    todo = [b for b in branches
            if b.fork > 0 and (runs.read_summary(runs.run_dir(b.cfg)) or {}).get("status") not in runs.FINISHED]
    if todo:
        # The trunk also logs where each branch logs before it branches off, so every branch's curve is whole.
        points = {p for b in todo for p in plans.eval_points(b.steps, b.cfg.train.n_evals,
                                                             min(b.cfg.train.steps_per_dispatch, b.steps))
                  if p <= b.fork}
        summary = run(trunk, folder=folder, save_forks=tuple(sorted({b.fork for b in todo})),
                      extra_points=tuple(sorted(points)))
        if summary["status"] != "completed":
            raise RuntimeError(f"trunk {folder} ended {summary['status']}; its branches were not trained")
    return [run(b.cfg, fork=engine.Fork(folder, b.fork) if b.fork > 0 else None) for b in branches]


def run_cell(cfg: DictConfig):
    """One grid cell: a run, a warmup-stable-decay trunk with its branches, or a pack of vmapped runs."""
    if cfg.train.branch_tokens is not None:
        return run_branches(cfg)
    if packing.is_packed(cfg):
        return run_pack(cfg)
    return run(cfg)


def _train(cfgs: list[DictConfig], folders: list[Path], home: Path, **kwargs) -> list[dict]:
    try:
        return engine.Engine(cfgs, folders, home, **kwargs).run()
    except ConfigError:
        raise
    except Exception as e:  # every run keeps the evidence in its folder, then the launcher sees the failure
        for folder in folders:
            runs.record_failure(folder, e)
        raise
