"""Warmup-stable-decay branching (Hagele et al. 2024): a whole row of token budgets for one model from one run.

A warmup-stable-decay (WSD) run of S steps holds its learning rate flat until it cools down over the last
decay_frac of its steps. Two WSD runs of the same model that differ only in length are therefore the same run
until the shorter one starts cooling down. With `train.branch_tokens=[T1, T2, ...]` (and optim=wsd) one job
trains a single constant-rate trunk and, at each budget's decay start, branches a cooldown off it:

    trunk   (optim constant, warmup W)  ----------+---------------+-----------------+
    branch  T1                                    \\ cooldown      |                 |
    branch  T2                                                    \\ cooldown        |
    branch  T3                                                                      \\ cooldown

Each branch is written as its own run, identical to the standalone run `optim=wsd optim.warmup_steps=W
train.tokens=Ti` (same run id, same data order, same learning rate at every step), so the sweep, collect and
the fits treat it as one. All branches share the warmup W: optim.warmup_steps if set, else warmup_frac of the
shortest budget. The trunk lives in <sweep>/trunks/<run_id>/ with a saved state at each decay start
(forks/); the fits never see it. Compute: the trunk to the last decay start plus every cooldown, instead of
the sum of all budgets.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from scaling import runs, sizes
from scaling.config import ConfigError, validate, with_values
from scaling.optim import warmup_steps as warmup_length
from scaling.optim import wsd_decay_start


def plan(cfg: DictConfig) -> tuple[DictConfig, list[tuple[DictConfig, int, int]]]:
    """The trunk's config, and for each budget in increasing order (standalone config, steps, step it branches
    off the trunk at)."""
    from scaling.train import resolve_steps, shape_of

    shape = shape_of(cfg)
    n = sizes.count_params(shape)["N"]
    tokens_per_step = cfg.train.batch_size * shape.seq_len
    base = with_values(cfg, **{"train.branch_tokens": None})
    budgets = [with_values(base, **{"train.tokens": t}) for t in sorted({float(t) for t in cfg.train.branch_tokens})]
    steps = [resolve_steps(b.train, n, tokens_per_step)[0] for b in budgets]
    warmup = cfg.optim.warmup_steps
    if warmup is None:
        warmup = warmup_length(min(steps), cfg.optim.warmup_frac)
    branches = [(with_values(b, **{"optim.warmup_steps": int(warmup)}), s, wsd_decay_start(s, warmup, cfg.optim.decay_frac))
                for b, s in zip(budgets, steps)]
    trunk = with_values(base, **{"optim.name": "constant", "optim.warmup_steps": int(warmup), "train.tokens": None,
                           "train.steps": max(1, max(f for *_, f in branches))})
    return trunk, branches


def trunk_dir(cfg: DictConfig, trunk: DictConfig) -> Path:
    return runs.run_dir(cfg).parent / "trunks" / runs.run_id(trunk)


def run(cfg: DictConfig) -> list[dict]:
    """Train every budget of cfg.train.branch_tokens not yet finished; return their summaries."""
    from scaling import train

    try:
        validate(cfg)
    except ValueError as e:  # ConfigError, or a shape error naming its field
        raise ConfigError(str(e)) from None
    trunk, branches = plan(cfg)
    folder = trunk_dir(cfg, trunk)
    todo = [(b, s, f) for b, s, f in branches if f > 0 and
            (runs.read_summary(runs.run_dir(b)) or {}).get("status") not in runs.FINISHED]
    if todo:
        # The trunk also logs where each branch logs before it branches off, so every branch's curve is whole.
        points = {p for b, s, f in todo
                  for p in train.eval_points(s, b.train.n_evals, min(b.train.steps_per_dispatch, s)) if p <= f}
        summary = train.run(trunk, folder=folder, save_forks=tuple(sorted({f for *_, f in todo})),
                            extra_points=tuple(sorted(points)))
        if summary["status"] != "completed":
            raise RuntimeError(f"trunk {folder} ended {summary['status']}; its branches were not trained")
    return [train.run(b, fork=train.Fork(folder, f) if f > 0 else None) for b, _, f in branches]
