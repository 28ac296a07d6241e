"""AdamW with gradient clipping and the learning-rate schedules: cosine, warmup-stable-decay, constant.

Every schedule ends at the run's own last step: a cosine longer than the run leaves the learning rate high at
the end and biases the fitted law (Hoffmann et al. 2022, Appendix; Kaplan et al. used such cycles).
"""

from __future__ import annotations

import jax
import optax

from scaling.plan import warmup_steps, wsd_decay_start


def schedule(name: str, peak_lr: float, steps: int, warmup_frac: float, min_lr_frac: float, decay_frac: float,
             fixed_warmup: int | None = None):
    """The learning rate at each step: a linear warmup, then the named schedule (scaling.config.SCHEDULES)."""
    warmup = warmup_steps(steps, warmup_frac, fixed_warmup)
    rest = steps - warmup
    main = {
        "cosine": lambda: optax.cosine_decay_schedule(peak_lr, max(rest, 1), alpha=min_lr_frac),
        "constant": lambda: optax.constant_schedule(peak_lr),
        "wsd": lambda: _wsd(peak_lr, steps, warmup, decay_frac),
    }[name]()
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), main], [warmup])


def _wsd(peak_lr: float, steps: int, warmup: int, decay_frac: float):
    """Warmup-stable-decay (Hu et al. 2024; Hagele et al. 2024) after the warmup: flat, then a linear cooldown to
    zero over the last decay_frac of all steps."""
    stable = wsd_decay_start(steps, warmup, decay_frac) - warmup
    decay = steps - warmup - stable
    return optax.join_schedules([optax.constant_schedule(peak_lr), optax.linear_schedule(peak_lr, 0.0, decay)],
                                [stable])


def make_optimizer(cfg, peak_lr: float, steps: int, peak_in_state: bool = False):
    """AdamW (decoupled weight decay on matrices only) after global-norm gradient clipping; returns (tx, lr_fn).

    peak_in_state: the schedule runs at peak 1 and the peak rate is a value in the optimizer state, so runs that
    differ only in learning rate can share one program (scaling.packing). AdamW's update, weight decay included,
    is linear in the rate, so this is the same optimizer up to float rounding.
    """
    lr = schedule(cfg.name, 1.0 if peak_in_state else peak_lr, steps, cfg.warmup_frac, cfg.min_lr_frac,
                  cfg.decay_frac, cfg.warmup_steps)

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
    )
    if peak_in_state:
        tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=peak_lr))
        return tx, lambda step: peak_lr * lr(step)
    return tx, lr
