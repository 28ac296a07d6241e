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
shortest budget. The trunk lives in <sweep>/trunks/<run_id>/ (scaling.runs.trunk_dir) with a saved state at
each decay start (forks/); the fits never see it. Compute: the trunk to the last decay start plus every
cooldown, instead of the sum of all budgets. This module is the plan; scaling.train.run_branches trains it.
"""

from __future__ import annotations

from typing import NamedTuple

from omegaconf import DictConfig

from scaling import plan as plans
from scaling import sizes
from scaling.config import with_values


class Branch(NamedTuple):
    cfg: DictConfig  # the standalone run this branch stands for
    steps: int
    fork: int  # the trunk step it branches off at (its decay start)


def plan(cfg: DictConfig) -> tuple[DictConfig, list[Branch]]:
    """The trunk's config, and the branches in increasing order of budget."""
    shape = plans.shape_of(cfg)
    n = sizes.count_params(shape)["N"]
    tokens_per_step = cfg.train.batch_size * shape.seq_len
    base = with_values(cfg, **{"train.branch_tokens": None})
    budgets = [with_values(base, **{"train.tokens": t}) for t in sorted({float(t) for t in cfg.train.branch_tokens})]
    steps = [plans.resolve_steps(b.train, n, tokens_per_step)[0] for b in budgets]
    warmup = cfg.optim.warmup_steps
    if warmup is None:
        warmup = plans.warmup_steps(min(steps), cfg.optim.warmup_frac)
    branches = [Branch(with_values(b, **{"optim.warmup_steps": int(warmup)}), s,
                       plans.wsd_decay_start(s, warmup, cfg.optim.decay_frac)) for b, s in zip(budgets, steps)]
    trunk = with_values(base, **{"optim.name": "constant", "optim.warmup_steps": int(warmup), "train.tokens": None,
                                 "train.steps": max(1, max(b.fork for b in branches))})
    return trunk, branches
