"""The extrapolation check: refit the joint law without the largest runs, predict them, and say how far off it is.

What is held out, in this order: the runs above a given compute (--holdout-above-flops), the k largest-compute
runs (--holdout-top), or, by default, every run of the largest compute budget when the table has budgets
(IsoFLOP sweeps: "fit on every budget but the largest") and else the fifth of the runs with the most compute.

Each prediction carries two 95% intervals: the parameter-only one (the bootstrap of the refitted law) and the
predictive one (analysis.predictive: the bootstrap times the residual scatter of the fitted runs, the seed noise
of replicate runs (runs equal in every design column, DESIGN) and the law's measured drift per decade of
extrapolation). A held-out run counts as inside when it lies in its predictive interval.

Where held-out cells have replicate runs, the check also separates noise from misfit: each cell's mean loss over
its seeds against the prediction, in units of the noise of that mean (the held-out replicates' pooled seed sd over
the square root of the cell's runs), and the mean error over all held-out runs against its standard error. A law
that is right up to noise leaves errors of a few units; a systematic misfit leaves a mean error many standard
errors from zero, and no number of seeds will average it away.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import laws, predictive
from analysis.isoflop import budgets
from analysis.table import Table

MIN_BUDGETS = 3  # holding out the largest budget leaves at least two to fit
# What a run's design is: replicates are runs equal in all of these that the table has (a seed aside), never in N
# and D alone: runs that differ only in unique tokens, schedule, group or budget differ by design, not by noise
DESIGN = ("N", "D", "U", "schedule", "group", "budget")


def seed_noise(df: pd.DataFrame) -> dict | None:
    """Run-to-run scatter from replicates (cells of runs equal in every DESIGN column): the pooled standard
    deviation of log loss, which is the relative standard deviation of loss to first order. None without
    replicates."""
    design = [c for c in DESIGN if c in df]
    logs = np.log(df["loss"].astype(float)).groupby([df[c] for c in design], dropna=False)
    sizes = logs.size()
    if (sizes >= 2).sum() == 0:
        return None
    var, dof = logs.var(ddof=1)[sizes >= 2], (sizes - 1)[sizes >= 2]
    per_cell = [{"N": float(key[0]), "D": float(key[1]), "runs": int(sizes[key]), "rel_sd": float(np.sqrt(v))}
                for key, v in var.items()]
    return {"rel_sd": float(np.sqrt((var * dof).sum() / dof.sum())), "cells": len(var),
            "runs": int(sizes[sizes >= 2].sum()), "dof": int(dof.sum()), "per_cell": per_cell}


def seed_sd(df: pd.DataFrame) -> float:
    """The pooled seed-to-seed sd of log loss (seed_noise), 0 without replicates."""
    noise = seed_noise(df)
    return noise["rel_sd"] if noise else 0.0


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
    return t.rows(df[~held]), df[held].reset_index(drop=True), label


def noise_and_misfit(rows: list[dict]) -> dict | None:
    """The held-out runs averaged over seeds, cell by cell (runs sharing N and D), with the error of each cell's
    geometric mean loss in units of its seed noise, and the mean log error over all held-out runs against its
    standard error. None when no held-out cell has two or more runs."""
    held = pd.DataFrame(rows)
    noise = seed_noise(held)
    if noise is None:
        return None
    sd = noise["rel_sd"]
    cells = []
    for (n, d), c in held.groupby(["N", "D"], sort=False):
        log_loss = np.log(c["loss"].to_numpy(float))
        mean, predicted = float(np.exp(log_loss.mean())), float(c["predicted"].iloc[0])
        cells.append({"N": float(n), "D": float(d), "C": float(c["C"].iloc[0]), "runs": len(c), "loss": mean,
                      "predicted": predicted, "rel_error": (predicted - mean) / mean,
                      "seed_rel_sd": float(log_loss.std(ddof=1)) if len(c) >= 2 else None,
                      "noise_units": float(np.log(predicted / mean) / (sd / np.sqrt(len(c)))) if sd > 0 else None})
    log_errors = np.log(held["predicted"].to_numpy(float) / held["loss"].to_numpy(float))
    bias, se = float(log_errors.mean()), sd / np.sqrt(len(held))
    return {"seed_rel_sd": sd, "seed_cells": noise["cells"], "seed_dof": noise["dof"], "cells": cells,
            "max_abs_rel_error": float(np.max(np.abs([c["rel_error"] for c in cells]))),
            "mean_log_error": bias, "mean_log_error_se": se,
            # None: some prediction is not finite (a law that ran away), so there is no error to weigh
            "systematic": bool(abs(bias) > 2 * se) if np.isfinite(bias) else None}


def check(t: Table, above_flops=None, top_k=None, n_boot: int = 200, seed: int = 0) -> dict | None:
    """Fit the Chinchilla law without the held-out runs and predict each of them."""
    fit_t, held, label = holdout_split(t, above_flops, top_k)
    if len(held) == 0 or len(fit_t.df) < 6:
        return None
    fit = laws.chinchilla(fit_t, n_boot=n_boot, seed=seed)
    noise = seed_noise(t.df)
    scatter = predictive.scatter(fit_t, fit, noise["rel_sd"] if noise else 0.0)
    pred = fit.predict(held["N"], held["D"])
    rows = []
    for i, r in held.iterrows():
        lo, hi = predictive.interval(fit, scatter, r["N"], r["D"], r["C"], seed=seed + i)
        p_lo, p_hi = laws.predicted_interval(fit, r["N"], r["D"])
        rows.append({"N": r["N"], "D": r["D"], "C": r["C"], "loss": r["loss"], "predicted": float(pred[i]),
                     "predicted_low": lo, "predicted_high": hi, "parameter_low": p_lo, "parameter_high": p_hi,
                     "inside": bool(lo <= r["loss"] <= hi),
                     "inside_parameter_only": bool(p_lo <= r["loss"] <= p_hi),
                     "rel_error": float((pred[i] - r["loss"]) / r["loss"])})
    return {"holdout": label, "n_fit": len(fit_t.df), "rows": rows,
            # NaN when a prediction is not finite (a law with a runaway exponent): unknown, not small
            "max_abs_rel_error": float(np.max(np.abs([r["rel_error"] for r in rows]))),
            "inside": sum(r["inside"] for r in rows),
            "inside_parameter_only": sum(r["inside_parameter_only"] for r in rows), "seed_noise": noise,
            "noise_and_misfit": noise_and_misfit(rows),
            "scatter": scatter.to_json(), "interval": f"predictive: bootstrap refits x ({scatter.describe()})",
            # the point law the plot draws; with its log coefficients, finite where A or B overflow
            "fit": {**{k: v["value"] for k, v in fit.params.items()}, **fit.log_coefficients},
            "fit_intervals": {k: [v["ci_low"], v["ci_high"]] for k, v in fit.params.items()}}
