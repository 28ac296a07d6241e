"""The learning-rate rule from a learning-rate scan: the best rate per model size, and a power law through them.

Per size, final loss against log(lr) is fitted with a parabola through the best rate and its neighbours
(DeepSeek LLM 2024 and Porian et al. 2024 fit lr_opt the same way); the vertex is lr_opt. Then
lr_opt(N) = c * N^-p is fitted in log-log space, with a bootstrap over the sizes for the exponent's interval.
A scan that trains sizes at several run lengths (columns steps, d_model, batch_size, seq_len) gets the horizon
law instead: the width rule's constant lr_opt * d_model, at the reference batch, against the number of steps,
k = k_1 * steps^-b (Bjorck et al. 2024 found the best rate falling as a power of the token horizon).

    python -m analysis.hyperparams results/reference-lr           # the optima and lr_opt(N)
    python -m analysis.hyperparams results/reference-lr-horizon   # the optima and k(steps)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from analysis import lse
from analysis.table import TableError, read_any


def lr_optimum(lr: np.ndarray, loss: np.ndarray) -> float | None:
    """The vertex of a parabola in log(lr) through the best rate and its two neighbours; None when the best rate
    is at the edge of the scan (the optimum is not bracketed) or the parabola opens downwards."""
    order = np.argsort(lr)
    lr, loss = np.asarray(lr, float)[order], np.asarray(loss, float)[order]
    ok = np.isfinite(loss)
    lr, loss = lr[ok], loss[ok]
    if len(lr) < 3:
        return None
    i = int(np.argmin(loss))
    if i == 0 or i == len(lr) - 1:
        return None
    x = np.log(lr[i - 1:i + 2])
    c2, c1, _ = np.polyfit(x, loss[i - 1:i + 2], 2)
    if c2 <= 0:
        return None
    return float(np.exp(np.clip(-c1 / (2 * c2), x[0], x[-1])))


REFERENCE_BATCH_TOKENS = 2048  # the width rule's batch (scaling.sizes): rates scale as sqrt(tokens per step)


def optima(df: pd.DataFrame) -> pd.DataFrame:
    """lr_opt per scanned cell: model size N, and where the table has them, run length, batch and seed (diverged
    runs count as infinitely bad)."""
    keys = [k for k in ("N", "steps", "batch_size", "seed") if k in df]
    rows = []
    for key, g in df.groupby(keys):
        loss = np.where(g["status"].eq("completed"), g["loss"], np.inf) if "status" in g else g["loss"]
        best = lr_optimum(g["lr"].to_numpy(float), np.asarray(loss, float))
        row = {**dict(zip(keys, np.atleast_1d(key))), "model": g["model"].iloc[0] if "model" in g else "",
               "rates": len(g), "lr_opt": best, "best_scanned": float(g["lr"].to_numpy()[np.argmin(loss)]),
               "loss_min": float(np.min(loss))}
        row["N"] = float(row["N"])
        if "d_model" in g and best is not None:  # the width rule lr = k / d_model: k per cell
            row["lr_opt_x_d_model"] = best * float(g["d_model"].iloc[0])
            if "batch_size" in g and "seq_len" in g:  # k at the rule's reference batch
                tokens = float(g["batch_size"].iloc[0] * g["seq_len"].iloc[0])
                row["k_at_reference_batch"] = row["lr_opt_x_d_model"] * np.sqrt(REFERENCE_BATCH_TOKENS / tokens)
        rows.append(row)
    return pd.DataFrame(rows)


def _power_law(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, tuple, float]:
    """y = c * x^-p by least squares in log-log space: c, p, p's 95% bootstrap interval over the points, and the
    residual sd in log y."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, icpt = np.polyfit(lx, ly, 1)
    rng = np.random.default_rng(seed)
    boots = [np.polyfit(lx[i], ly[i], 1)[0] for i in (rng.integers(0, len(lx), len(lx)) for _ in range(n_boot))
             if len(np.unique(lx[i])) >= 2]
    return (float(np.exp(icpt)), float(-slope), lse.interval(-np.array(boots)),
            float(np.std(ly - (slope * lx + icpt), ddof=2)))


def rule(opt: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """lr_opt = c N^-p through the bracketed optima, with 95% bootstrap intervals over sizes."""
    o = opt.dropna(subset=["lr_opt"])
    if len(o) < 3:
        raise ValueError(f"the rule needs bracketed optima at 3 or more sizes; the scan has {len(o)}")
    c, p, interval, sd = _power_law(o["N"], o["lr_opt"], n_boot, seed)
    return {"c": c, "p": p, "p_interval": interval, "sizes": len(o), "residual_sd": sd}


def horizon(opt: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """k = k_1 * steps^-b through the bracketed optima (k: lr_opt * d_model at the reference batch), with a 95%
    bootstrap interval on b over the cells; `steps_at(k)` inverts it."""
    if "k_at_reference_batch" not in opt:
        raise ValueError("the horizon law needs columns steps, d_model, batch_size and seq_len")
    o = opt.dropna(subset=["lr_opt"])
    if o["steps"].nunique() < 3:
        raise ValueError(f"the horizon law needs bracketed optima at 3 or more run lengths; the scan has "
                         f"{o['steps'].nunique()}")
    k1, b, interval, sd = _power_law(o["steps"], o["k_at_reference_batch"], n_boot, seed)
    return {"k_1": k1, "b": b, "b_interval": interval, "cells": len(o), "residual_sd": sd,
            "steps_at": lambda k: (k1 / k) ** (1 / b) if b > 0 else float("inf")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.hyperparams", description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results folder or table from a learning-rate scan (columns N, lr, loss)")
    args = ap.parse_args(argv)
    try:
        df = read_any(args.results)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = {"N", "lr", "loss"} - set(df.columns)
    if missing:
        print(f"error: {args.results}: a learning-rate scan needs columns N, lr and loss; missing "
              f"{', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    opt = optima(df)
    print(opt.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    by_length = "steps" in opt and opt.groupby("N")["steps"].nunique().max() > 1  # a scan over run lengths
    try:
        law = horizon(opt) if by_length else rule(opt)
    except ValueError as e:
        print(f"no {'horizon law' if by_length else 'rule'}: {e}")
        return 1
    if by_length:
        (lo, hi), count = law["b_interval"], f"{law['cells']} cells"
        head = (f"lr_opt * d_model * sqrt({REFERENCE_BATCH_TOKENS} / tokens per step) = {law['k_1']:.4g} * "
                f"steps^-{law['b']:.3f}  (b")
    else:
        (lo, hi), count = law["p_interval"], f"{law['sizes']} sizes"
        head = f"lr_opt = {law['c']:.4g} * N^-{law['p']:.3f}  (p"
    print(f"\n{head} 95% interval [{lo:.3f}, {hi:.3f}], {count}, residual sd {law['residual_sd']:.3f} in log lr)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
