"""A run's plan, before any compute: its shape, length, learning rate, evaluation points and dispatch chunks.

Pure arithmetic on the config (no JAX), so `scaling plan`, the sweep planner and the training engine agree on
every number. Run length precedence: train.steps, then train.flops (C = 6 N tokens), then train.tokens, then
train.tokens_per_param (tokens = ratio x N); the first one set wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from scaling import sizes, tokenizer


@dataclass(frozen=True)
class RunPlan:
    shape: sizes.Shape
    N: int  # non-embedding parameters
    steps: int
    length_source: str  # which train.* key set the length
    tokens_per_step: int  # batch_size x seq_len
    k: int  # optimizer steps per dispatch (one jitted lax.scan)
    points: tuple[int, ...]  # steps after which the run is evaluated (and logged)
    peak_lr: float

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def chunks(self) -> list[tuple[int, int]]:
        return chunks(self.steps, list(self.points), self.k)


def shape_of(cfg: DictConfig) -> sizes.Shape:
    """The model's shape; its vocabulary is model.vocab, or when that is null the tokenizer's padded to a multiple
    of 64 (scaling.tokenizer.model_vocab)."""
    m = cfg.model
    return sizes.Shape(m.n_layers, m.d_model, m.n_heads, m.d_ff, m.seq_len, vocab_of(cfg))


def vocab_of(cfg: DictConfig) -> int:
    if cfg.model.vocab is not None:
        return int(cfg.model.vocab)
    d = cfg.data
    return tokenizer.model_vocab(d.tokenizer, d.vocab_size, d.corpus)


def peak_lr(cfg: DictConfig, shape: sizes.Shape, steps: int) -> float:
    """optim.lr, else the size's default rate (scaling.sizes.default_learning_rate) times the run length's
    horizon factor (scaling.sizes.horizon_factor; 1 unless optim.lr_horizon_steps is set)."""
    if cfg.optim.lr is not None:
        return float(cfg.optim.lr)
    o = cfg.optim
    return (sizes.default_learning_rate(shape.d_model, cfg.train.batch_size * shape.seq_len)
            * sizes.horizon_factor(steps, o.lr_horizon_steps, o.lr_horizon_exponent))


def resolve_steps(train_cfg, n_params: int, tokens_per_step: int) -> tuple[int, str]:
    """Run length in steps and the key that set it (precedence in the module docstring)."""
    if train_cfg.steps is not None:
        return int(train_cfg.steps), "train.steps"
    if train_cfg.flops is not None:
        tokens, source = train_cfg.flops / (6 * n_params), "train.flops"
    elif train_cfg.tokens is not None:
        tokens, source = float(train_cfg.tokens), "train.tokens"
    else:
        tokens, source = train_cfg.tokens_per_param * n_params, "train.tokens_per_param"
    return max(1, round(tokens / tokens_per_step)), source


def eval_points(steps: int, n_evals: int, k: int) -> list[int]:
    """Log-spaced step counts at which to evaluate, on multiples of k (chunk boundaries), always ending at steps."""
    raw = np.geomspace(k, max(steps, k), n_evals) if n_evals > 1 else np.array([steps])
    points = {int(min(steps, max(k, round(x / k) * k))) for x in raw}
    points.add(steps)
    return sorted(points)


def chunks(steps: int, points: list[int], k: int) -> list[tuple[int, int]]:
    """(start, n) for each dispatch: n <= k steps, never crossing an evaluation point."""
    out, start = [], 0
    for stop in points:
        while start < stop:
            n = min(k, stop - start)
            out.append((start, n))
            start += n
    return out


def warmup_steps(steps: int, warmup_frac: float, fixed: int | None = None) -> int:
    """Linear-warmup length: `fixed` steps if given, else warmup_frac of the run; always less than the run."""
    warmup = fixed if fixed is not None else (max(1, round(warmup_frac * steps)) if warmup_frac > 0 else 0)
    return min(warmup, steps - 1) if steps > 1 else 0


def wsd_decay_start(steps: int, warmup: int, decay_frac: float) -> int:
    """The step at which a warmup-stable-decay run of `steps` steps leaves its stable phase."""
    return warmup + max(steps - warmup - max(1, round(decay_frac * steps)), 0)


def plan_run(cfg: DictConfig, extra_points: tuple[int, ...] = ()) -> RunPlan:
    """The plan of the run cfg describes; extra_points are evaluated too (a WSD trunk evaluates where its branches
    log and where they fork off it)."""
    shape = shape_of(cfg)
    n = sizes.count_params(shape)["N"]
    tokens_per_step = cfg.train.batch_size * shape.seq_len
    steps, source = resolve_steps(cfg.train, n, tokens_per_step)
    k = min(cfg.train.steps_per_dispatch, steps)
    points = set(eval_points(steps, cfg.train.n_evals, k)) | {p for p in extra_points if p <= steps}
    return RunPlan(shape, n, steps, source, tokens_per_step, k, tuple(sorted(points)),
                   peak_lr(cfg, shape, steps))
