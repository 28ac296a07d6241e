"""AdamW with gradient clipping and the learning-rate schedules: cosine, warmup-stable-decay, constant.

Every schedule ends at the run's own last step: a cosine longer than the run leaves the learning rate high at
the end and biases the fitted law (Hoffmann et al. 2022, Appendix; Kaplan et al. used such cycles).
"""

from __future__ import annotations

import jax
import optax


def schedule(name: str, peak_lr: float, steps: int, warmup_frac: float, min_lr_frac: float, decay_frac: float):
    warmup = max(1, round(warmup_frac * steps)) if warmup_frac > 0 else 0
    warmup = min(warmup, steps - 1) if steps > 1 else 0
    ramp = optax.linear_schedule(0.0, peak_lr, warmup) if warmup else None
    rest = steps - warmup
    if name == "cosine":
        main = optax.cosine_decay_schedule(peak_lr, max(rest, 1), alpha=min_lr_frac)
    elif name == "constant":
        main = optax.constant_schedule(peak_lr)
    elif name == "wsd":
        # Warmup-stable-decay (Hu et al. 2024; Hagele et al. 2024): flat, then a linear cooldown to zero
        # over the last decay_frac of all steps.
        decay = max(1, round(decay_frac * steps))
        stable = max(rest - decay, 0)
        main = optax.join_schedules(
            [optax.constant_schedule(peak_lr), optax.linear_schedule(peak_lr, 0.0, decay)], [stable]
        )
    else:
        raise ValueError(f"optim.name must be one of cosine, wsd, constant, got {name!r}")
    return optax.join_schedules([ramp, main], [warmup]) if ramp else main


def make_optimizer(cfg, peak_lr: float, steps: int):
    """AdamW (decoupled weight decay on matrices only) after global-norm gradient clipping."""
    lr = schedule(cfg.name, peak_lr, steps, cfg.warmup_frac, cfg.min_lr_frac, cfg.decay_frac)

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
    )
    return tx, lr
