"""Training a grid cell through the one engine (scaling.engine): a run, a pack of runs, or a row of WSD branches.

Each function skips finished runs and resumes interrupted ones (scaling.runs); a run that raises is marked
failed with its traceback in error.txt, and relaunching reruns it only with rerun_failed=true.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from omegaconf import DictConfig

from scaling import branching, engine, packing, runs
from scaling import plan as plans
from scaling.config import ConfigError, validate
from scaling.lock import LockLost, RunLock

log = logging.getLogger("scaling.train")


def run(cfg: DictConfig, folder: Path | None = None, fork: engine.Fork | None = None,
        save_forks: tuple[int, ...] = (), extra_points: tuple[int, ...] = ()) -> dict:
    """Train one run described by cfg; return its summary. Waits while another process trains it (the run lock).

    folder: where the run lives (default runs.run_dir(cfg)); fork: start from another run's saved state;
    save_forks: steps at which to keep a copy of the state for runs branched off this one (also evaluated there,
    as are extra_points).
    """
    validate(cfg)
    folder = folder or runs.run_dir(cfg)
    if (settled := _settled(cfg, folder)) is not None:
        return settled
    with RunLock(folder) as lock:  # another process may have finished it while we waited
        return _settled(cfg, folder) or _train_one(cfg, folder, fork=fork, save_forks=save_forks,
                                                   extra_points=extra_points, guard=lock.check)


def run_pack(cfg: DictConfig) -> list[dict]:
    """Train the unfinished members of cfg's pack (scaling.packing) together; return every member's summary."""
    validate(cfg)
    everyone = packing.members(cfg)
    folders = [runs.run_dir(m) for m in everyone]
    done = {i: s for i, (m, f) in enumerate(zip(everyone, folders)) if (s := _settled(m, f)) is not None}
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(RunLock(folders[i]))  # in one global order: overlapping packs cannot deadlock
                for i in sorted((i for i in range(len(everyone)) if i not in done), key=lambda i: folders[i].name)]

        def guard():
            for lock in held:
                lock.check()

        done |= {i: s for i in range(len(everyone)) if i not in done and (s := _settled(everyone[i], folders[i]))}
        todo = [i for i in range(len(everyone)) if i not in done]
        if len(todo) == 1:  # alone it is a plain run, bitwise the separate one
            done[todo[0]] = _train_one(everyone[todo[0]], folders[todo[0]], guard=guard)
        elif todo:
            guard()
            for i in todo:
                runs.prepare(folders[i], everyone[i])
            done |= dict(zip(todo, _train([everyone[i] for i in todo], [folders[i] for i in todo],
                                          runs.pack_dir([folders[i] for i in todo]), guard=guard)))
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


def _settled(cfg: DictConfig, folder: Path) -> dict | None:
    """The summary of a run a relaunch must leave alone (finished, or failed without rerun_failed), else None."""
    summary = runs.read_summary(folder)
    if runs.is_settled(summary, cfg.rerun_failed):
        log.info("skip %s: %s", folder, summary["status"])
        return summary
    return None


def _train_one(cfg: DictConfig, folder: Path, **kwargs) -> dict:
    kwargs.get("guard", lambda: None)()
    runs.prepare(folder, cfg)
    return _train([cfg], [folder], folder, **kwargs)[0]


def _train(cfgs: list[DictConfig], folders: list[Path], home: Path, **kwargs) -> list[dict]:
    try:
        return engine.Engine(cfgs, folders, home, **kwargs).run()
    except (ConfigError, LockLost):  # a mistake before any compute; a run that is another process's now
        raise
    except runs.StorageError as e:  # a checkpoint that does not restore: resumable by the next launch
        for folder in folders:
            runs.record_interruption(folder, str(e))
        raise
    except Exception as e:  # every run keeps the evidence in its folder, then the launcher sees the failure
        if (why := runs.storage_problem(e)) is not None:  # not the run's fault: it resumes once there is room
            for folder in folders:
                runs.record_interruption(folder, why)
            raise runs.StorageError(f"run {home} cannot be written: {why}; it is interrupted, and the same command "
                                    f"resumes it from its last checkpoint once there is room") from None
        for folder in folders:
            runs.record_failure(folder, e)
        raise
