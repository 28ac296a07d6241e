"""Training throughput of a compiled program on random tokens: for `scaling bench` and `scaling plan --time`."""

from __future__ import annotations

import math
import time

import numpy as np
from omegaconf import DictConfig

from scaling import plan as plans
from scaling import program, sizes


def random_chunk(shape: sizes.Shape, k: int, batch: int, members: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k batches of random tokens (for each of `members` packed runs, if given) and the all-active mask: a
    train_chunk input for throughput measurements."""
    dims = ((members,) if members else ()) + (k, batch, shape.seq_len + 1)
    return np.random.default_rng(0).integers(0, shape.vocab, dims).astype(np.int32), np.ones(k, bool)


def steady_tokens_per_s(step, state, tokens, active, chunks: int = 3, seconds: float = 0.0) -> float:
    """Training tokens/s of an already compiled step function: at least `chunks` dispatches and `seconds`."""
    n, t0 = 0, time.perf_counter()
    while n < chunks or time.perf_counter() - t0 < seconds:
        state, losses = step(state, tokens, active)
        n += 1
        if n % 4 == 0:  # bound the queue of dispatched chunks
            losses.block_until_ready()
    losses.block_until_ready()
    return n * math.prod(tokens.shape[:-1]) * (tokens.shape[-1] - 1) / (time.perf_counter() - t0)


def measure(cfg: DictConfig, chunks: int = 3, members: int = 1) -> float:
    """Steady-state training tokens/s of cfg's shape on this device (random tokens; compile excluded), counting
    every member's tokens when `members` runs are packed into one program (scaling.packing)."""
    program.enable_compilation_cache(cfg.data.cache_dir)
    shape = plans.shape_of(cfg)
    prog = program.build(cfg, shape, 1000, [(cfg.train.seed + i, 1e-3) for i in range(members)])
    tokens, active = prog.feed(*random_chunk(shape, cfg.train.steps_per_dispatch, cfg.train.batch_size,
                                             members if members > 1 else None))
    state, losses = prog.train_chunk(prog.state, tokens, active)  # compile
    losses.block_until_ready()
    return steady_tokens_per_s(prog.train_chunk, state, tokens, active, chunks)
