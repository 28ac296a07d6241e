"""The extrapolation check: refit the joint law without the largest runs, predict them, and say how far off it is.

What is held out, in this order: the runs above a given compute (--holdout-above-flops), the k largest-compute
runs (--holdout-top), or, by default, every run of the largest compute budget when the table has budgets
(IsoFLOP sweeps: "fit on every budget but the largest") and else the fifth of the runs with the most compute.

The interval of each prediction is predictive, not only parametric: every bootstrap refit's prediction is
multiplied by exp(eps), eps ~ Normal(0, sigma), where sigma is the run-to-run scatter of log loss measured from
seed replicates (runs that share N and D), so a single new run should fall inside it 95% of the time.
Without replicates sigma = 0 and the interval covers the parameters' uncertainty only (the report says so).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import laws
from analysis.isoflop import budgets
from analysis.table import Table

MIN_BUDGETS = 3  # holding out the largest budget leaves at least two to fit


def seed_noise(df: pd.DataFrame) -> dict | None:
    """Run-to-run scatter from replicates (cells with the same N and D): the pooled standard deviation of log
    loss, which is the relative standard deviation of loss to first order. None without replicates."""
    logs = np.log(df["loss"].astype(float)).groupby([df["N"], df["D"]])
    sizes = logs.size()
    if (sizes >= 2).sum() == 0:
        return None
    var, dof = logs.var(ddof=1)[sizes >= 2], (sizes - 1)[sizes >= 2]
    per_cell = [{"N": float(n), "D": float(d), "runs": int(sizes[(n, d)]), "rel_sd": float(np.sqrt(v))}
                for (n, d), v in var.items()]
    return {"rel_sd": float(np.sqrt((var * dof).sum() / dof.sum())), "cells": len(var),
            "runs": int(sizes[sizes >= 2].sum()), "dof": int(dof.sum()), "per_cell": per_cell}


def holdout_split(t: Table, above_flops: float | None = None, top_k: int | None = None):
    """(the table to fit, the held-out rows, a label saying what was held out)."""
    df = t.df.sort_values("C").reset_index(drop=True)
    if above_flops is not None:
        held = df["C"] > above_flops
        label = f"runs with C > {above_flops:.3g}"
    elif top_k is None and "budget" in df and df["budget"].notna().all() and df["budget"].nunique() >= MIN_BUDGETS:
        b = budgets(df)
        held = b == b.max()
        label = f"the {int(held.sum())} runs of the largest budget (C = {b.max():.3g})"
    else:
        k = top_k if top_k is not None else max(1, len(df) // 5)
        held = pd.Series(np.arange(len(df)) >= len(df) - k)
        label = f"the {k} largest-compute runs"
    return Table(df[~held].reset_index(drop=True), t.source), df[held].reset_index(drop=True), label


def check(t: Table, above_flops=None, top_k=None, n_boot: int = 200, seed: int = 0) -> dict | None:
    """Fit the Chinchilla law without the held-out runs and predict each of them."""
    fit_t, held, label = holdout_split(t, above_flops, top_k)
    if len(held) == 0 or len(fit_t.df) < 6:
        return None
    fit = laws.chinchilla(fit_t, n_boot=n_boot, seed=seed)
    noise = seed_noise(t.df)
    rel_sd = noise["rel_sd"] if noise else 0.0
    pred = fit.predict(held["N"], held["D"])
    rows = []
    for i, r in held.iterrows():
        lo, hi = laws.predicted_interval(fit, r["N"], r["D"], rel_sd, seed=seed + i)
        rows.append({"N": r["N"], "D": r["D"], "C": r["C"], "loss": r["loss"], "predicted": float(pred[i]),
                     "predicted_low": lo, "predicted_high": hi, "inside": bool(lo <= r["loss"] <= hi),
                     "rel_error": float((pred[i] - r["loss"]) / r["loss"])})
    return {"holdout": label, "n_fit": len(fit_t.df), "rows": rows,
            # NaN when a prediction is not finite (a law with a runaway exponent): unknown, not small
            "max_abs_rel_error": float(np.max(np.abs([r["rel_error"] for r in rows]))),
            "inside": sum(r["inside"] for r in rows), "seed_noise": noise,
            "interval": "bootstrap refits x seed noise" if noise else "bootstrap refits only (no seed replicates)",
            "fit": {k: v["value"] for k, v in fit.params.items()},
            "fit_intervals": {k: [v["ci_low"], v["ci_high"]] for k, v in fit.params.items()}}
