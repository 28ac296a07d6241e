"""Packing runs that differ only in seed or learning rate into one program (jax.vmap): what a pack is.

With `train.seeds=[0,1,2]` and/or `optim.lrs=[1e-3,3e-3]` one job trains every (seed, lr) pair together: the
model and optimizer states are stacked along a leading member axis and one jitted, vmapped step advances them
all (scaling.program), so small models, whose steps are too short to keep the cores busy, share each dispatch
and each matmul kernel. Each member is written as its own run, the same run (same run id, same data order) as
`train.seed=s optim.lr=l`, equal to it up to float rounding: vmapped kernels sum in another order, and the peak
rate is applied as a separate factor (scaling.optim.make_optimizer). A member that diverges is recorded as
diverged at its first bad step; the others go on. The pack's checkpoint lives in <sweep>/packs/<id>/
(scaling.runs.pack_dir), so a killed pack resumes; finished members are left out of a relaunched pack.
"""

from __future__ import annotations

import itertools

from omegaconf import DictConfig

from scaling.config import with_values


def is_packed(cfg: DictConfig) -> bool:
    return cfg.train.seeds is not None or cfg.optim.lrs is not None


def members(cfg: DictConfig) -> list[DictConfig]:
    """One standalone config per (seed, learning rate) pair of the pack."""
    seeds = list(cfg.train.seeds) if cfg.train.seeds is not None else [cfg.train.seed]
    lrs = list(cfg.optim.lrs) if cfg.optim.lrs is not None else [cfg.optim.lr]
    base = with_values(cfg, **{"train.seeds": None, "optim.lrs": None})
    return [with_values(base, **{"train.seed": int(s), "optim.lr": lr}) for s, lr in itertools.product(seeds, lrs)]
