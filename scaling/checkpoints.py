"""Orbax checkpoints of a training state with its loop counters, saved synchronously (a kill right after a save
finds it whole)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every checkpoint step at INFO


def manager(folder: Path, max_to_keep: int | None = 1) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(Path(folder).absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False))


def save(mgr: ocp.CheckpointManager, step: int, state, acc: np.ndarray, elapsed: float) -> None:
    """acc: the loop's per-member counters (float64, shape (3, members): loss sums, counts, divergence steps)."""
    mgr.save(step, args=ocp.args.StandardSave({"state": nnx.to_pure_dict(state), "acc": acc.astype(np.float64),
                                               "elapsed": np.asarray(elapsed, dtype=np.float64)}), force=True)
    mgr.wait_until_finished()


def restore(mgr: ocp.CheckpointManager, step: int, state, members: int) -> tuple[np.ndarray, float]:
    """Load step's state into `state` (in place); return the loop counters and the elapsed seconds saved."""
    target = {"state": nnx.to_pure_dict(state), "acc": np.zeros((3, members)), "elapsed": np.zeros(())}
    restored = mgr.restore(step, args=ocp.args.StandardRestore(target))
    nnx.replace_by_pure_dict(state, restored["state"])
    return np.asarray(restored["acc"], np.float64), float(restored["elapsed"])
