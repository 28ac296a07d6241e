"""Fit every applicable form to a table, check extrapolation, write fit.json, the figures and report.md.

fit.json schema:
    {"source": str, "n_rows": int, "excluded": [str],
     "forms": {form: {"formula": str, "n_points": int, "objective": float | null,
                      "params": {name: {"value": float, "ci_low": float, "ci_high": float}},
                      "not_identified": {name: why},
                      "correlations": {"p~q": float} | null, "warnings": [str],
                      "search": {"starts", "fixed", "runs_in_stage_2", "minima": [{R*, "objective", "above_best"}],
                                 "compared": {"point", "objective"}} (the data-constrained law only)}},
     "skipped": {form: reason},
     "count": "6ND" | "6N_total_D" | "hardware"   (how C is counted; analysis.table.COUNTS),
     "frontier_law": {"formula", "count", "params", "noise", "noise_source", "drift_per_decade", "drift_assumed",
                      "backtests", "why_power", "points": [best_per_budget rows], "beyond": [{"C", "loss", with
                      _low/_high and _predictive_low/_high}], "check": {"holdout", "law", "rows", "max_abs_rel_error",
                      "inside"} | null, "warnings"} | null   (analysis.frontier_law),
     "extrapolation": {"holdout": str, "n_fit": int, "rows": [{"N", "D", "C", "loss", "predicted",
                       "predicted_low", "predicted_high" (predictive), "parameter_low", "parameter_high",
                       "inside", "inside_parameter_only", "rel_error"}], "max_abs_rel_error": float,
                       "inside": int, "inside_parameter_only": int,
                       "seed_noise": {"rel_sd", "cells", "runs", "dof", "per_cell"} | null,
                       "noise_and_misfit": {"seed_rel_sd", "seed_cells", "seed_dof", "cells": [{"N", "D", "C",
                                            "runs", "loss", "predicted", "rel_error", "seed_rel_sd",
                                            "noise_units"}], "max_abs_rel_error", "mean_log_error",
                                            "mean_log_error_se", "systematic": bool | null} | null,
                       "scatter": {"residual_sd", "seed_sd", "drift_per_decade", "c_fit_max", "backtests"},
                       "interval": str, "fit": {name: float}, "fit_intervals": {name: [low, high]}} | null,
     "optimal": [{"C", "N_opt", "D_opt", "tokens_per_param", "loss", with _low/_high,
                  "loss_predictive_low", "loss_predictive_high"}],
     "scatter": {...} | null   (the predictive terms of the full-table Chinchilla fit, as above),
     "warnings": [str]}
Parameter intervals are 95% bootstrap percentiles over runs; predictive intervals (analysis.predictive) add the
residual scatter, seed noise and extrapolation drift of the law to them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import (
    data_constrained,
    emergence_report,
    extrapolation,
    frontier_law,
    isoflop,
    laws,
    lse,
    plots,
    predictive,
    report_text,
)
from analysis.fit import Analysis, judge
from analysis.report_text import disagreements
from analysis.table import Table, TooFewToFit, load, results_folder


def _safe(skipped: dict, name: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), or None with the reason recorded in skipped[name] when the form does not apply."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, np.linalg.LinAlgError) as e:
        skipped[name] = str(e)
        return None


def envelope(t: Table, x: str) -> Table:
    """The lowest loss per distinct value of x (e.g. L(N) at the best D for each N)."""
    df = t.df.loc[t.df.groupby(x)["loss"].idxmin()].sort_values(x).reset_index(drop=True)
    return t.rows(df)


def joint_law_refusal(df: pd.DataFrame) -> str | None:
    """Why the joint laws L(N, D) cannot be fitted to a table, or None when they can (fit and predict agree)."""
    if df["N"].nunique() >= 2 and df["D"].nunique() >= 2 and len(df) >= 6:
        return None
    return (f"needs at least 6 runs with 2 or more distinct N and D; the table has {len(df)} run(s), "
            f"{df['N'].nunique()} distinct N and {df['D'].nunique()} distinct D")


def _fit_forms(t: Table, n_boot: int, seed: int, method: str, data_law: str = "two-stage",
               noise: float | None = None, data_options: dict | None = None) -> tuple[dict, dict, dict]:
    """Every form that applies to the table: (forms, skipped with reasons, extra tables of the IsoFLOP methods)."""
    forms, skipped, extra = {}, {}, {}
    df = t.df

    def add(fit):
        if fit:
            forms[fit.form] = fit

    if (why := joint_law_refusal(df)) is None:
        add(_safe(skipped, "chinchilla", laws.chinchilla, t, n_boot=n_boot, seed=seed, method=method))
        add(_safe(skipped, "kaplan_nd", laws.kaplan_nd, t, n_boot=min(n_boot, 200), seed=seed))
    else:
        skipped["chinchilla"] = why
    for x in ("N", "D", "C"):
        add(_safe(skipped, f"L({x})", laws.single, envelope(t, x), x, n_boot=n_boot, seed=seed))
    if "steps" in df and df["steps"].nunique() >= 3 and df["N"].nunique() >= 2:
        add(_safe(skipped, "kaplan_ns", laws.kaplan_ns, t, n_boot=min(n_boot, 200), seed=seed))
    front = _safe(skipped, "frontier", isoflop.approach1, t, n_boot=n_boot, seed=seed)
    if front:
        forms["frontier"], extra["frontier"] = front
    # budgets from the label column where it is filled, else from C clustered in log10 (analysis.isoflop.budgets)
    sub = t.rows(df[df["budget"].notna()]) if "budget" in df and \
        df["budget"].notna().any() else t
    # Porian et al.'s noise bootstrap: --noise, else their setting for the table's dataset, else the measured seed
    # noise, else their RefinedWeb scale
    abs_noise = noise if noise is not None else isoflop.dataset_noise(df)
    for how in ("akima", "parabola"):
        r = _safe(skipped, f"isoflop_{how}", isoflop.approach2, sub, how, n_boot=n_boot, seed=seed,
                  rel_noise=None if abs_noise else extrapolation.seed_sd(df), abs_noise=abs_noise)
        if r:
            forms[r[0].form], extra[f"isoflop_{how}"] = r
    # the two-stage law fits its own stage 1 (or takes it pinned); the one-R* form starts from the Chinchilla fit
    if data_law == "two-stage":
        add(_safe(skipped, "muennighoff", data_constrained.muennighoff, t, n_boot=min(n_boot, 200), seed=seed,
                  **(data_options or {})))
    elif "chinchilla" in forms:
        add(_safe(skipped, "muennighoff_one_rstar", data_constrained.muennighoff_one_rstar, t, forms["chinchilla"],
                  n_boot=min(n_boot, 200), seed=seed))
    for name, f in forms.items():
        judge(f, FREE_PARAMETERS.get(name, 0 if name.startswith("isoflop") else 3))
    return forms, skipped, extra


# Free parameters per form, for the points-per-parameter warning (one-variable laws: 3; the frontier: 2 per line;
# IsoFLOP fits rest on the budgets, which approach2 counts itself).
FREE_PARAMETERS = {"chinchilla": 5, "kaplan_nd": 4, "kaplan_ns": 4, "muennighoff": 6, "muennighoff_one_rstar": 6,
                   "frontier": 2}


def _warnings(df: pd.DataFrame, forms: dict) -> list[str]:
    """Warnings about the table as a whole: mixed schedules, methods that disagree."""
    out = []
    if "schedule" in df and df["schedule"].nunique() > 1:
        counts = ", ".join(f"{k}: {v}" for k, v in df["schedule"].value_counts().sort_index().items())
        out.append(f"the runs mix learning-rate schedules ({counts}); the fitted exponents depend on the "
                   f"schedule, so fit one at a time (--where \"schedule == 'wsd'\")")
    out += disagreements(forms)
    return out


def _optimal(chin, c_max: float, budgets_beyond, scatter: predictive.Scatter | None = None) -> list[dict]:
    """Compute-optimal N, D and loss at multiples of the largest compute, with intervals; the loss also with its
    predictive interval (one run trained at that allocation) when the scatter terms are known."""
    out = []
    for mult in budgets_beyond:
        C = c_max * mult
        row = {"C": C, **{k: float(v) for k, v in laws.optimal(chin, C).items()}}
        if chin.samples:
            samples = laws.optimal(chin, C, samples=True)
            for k, v in samples.items():
                row[f"{k}_low"], row[f"{k}_high"] = lse.interval(v)
            if scatter is not None:
                row["loss_predictive_low"], row["loss_predictive_high"] = predictive.spread(
                    samples["loss"], scatter, C, seed=int(mult))
        out.append(row)
    return out


def fit_all(t: Table, n_boot: int = laws.N_BOOT, seed: int = 0, holdout_above=None, holdout_top=None,
            budgets_beyond=(10, 100, 1000), method: str = "fast", data_law: str = "two-stage",
            noise: float | None = None, data_options: dict | None = None) -> Analysis:
    """data_options: fix, compare and starts for the two-stage data-constrained law (analysis.data_constrained)."""
    forms, skipped, extra = _fit_forms(t, n_boot, seed, method, data_law, noise, data_options)
    chin = forms.get("chinchilla")
    extrap = _safe(skipped, "extrapolation", extrapolation.check, t, holdout_above, holdout_top,
                   n_boot=min(n_boot, 200), seed=seed)
    frontier = _safe(skipped, "frontier_law", frontier_law.analyse, t, holdout_above, holdout_top,
                     n_boot=min(n_boot, frontier_law.N_BOOT), seed=seed)
    if not forms and frontier is None:  # a table too small for every law: say so, not an empty report
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items() if k in ("chinchilla", "L(N)", "frontier_law"))
        raise TooFewToFit(f"{t.source}: {len(t.df)} usable row(s) are too few to fit any law ({reasons})")
    scatter = predictive.scatter(t, chin, extrapolation.seed_sd(t.df)) if chin is not None else None
    # the joint law's allocation is solved in 6ND, its own count, whatever the table's
    return Analysis(table=t, forms=forms, skipped=skipped, extra=extra, scatter=scatter,
                    optimal=_optimal(chin, t.df["C_6ND"].max(), budgets_beyond, scatter) if chin else [],
                    extrapolation=extrap, warnings=_warnings(t.df, forms), n_boot=n_boot, frontier_law=frontier)


def to_json(result: Analysis) -> dict:
    t = result.table
    return {"source": t.source, "n_rows": len(t.df), "n_boot": result.n_boot, "excluded": t.excluded,
            "forms": {k: f.to_json() for k, f in result.forms.items()}, "skipped": result.skipped,
            "count": t.count, "frontier_law": result.frontier_law,
            "extrapolation": result.extrapolation, "optimal": result.optimal,
            "scatter": result.scatter.to_json() if result.scatter else None,
            "warnings": result.warnings}


def build(results: str | Path, quiet: bool = True, n_boot: int = laws.N_BOOT, fmt: str = "png", holdout_above=None,
          holdout_top=None, figures_only: bool = False, data_law: str = "two-stage", noise: float | None = None,
          data_options: dict | None = None, **load_kw) -> Analysis:
    """The whole analysis of a results folder (or table file): fit.json, plots/, report.md (only the figures
    with figures_only)."""
    folder = results_folder(results)
    t = load(results, **load_kw)
    try:
        result = fit_all(t, n_boot=n_boot, holdout_above=holdout_above, holdout_top=holdout_top, data_law=data_law,
                         noise=noise, data_options=data_options)
    except TooFewToFit as e:  # the report says so, and a relaunch of the same sweep finds it and rebuilds nothing
        if not figures_only:
            (folder / "report.md").write_text(f"# Scaling report: {t.source}\n\nNo law fitted: {e}.\n")
        raise
    figures = plots.all_figures(result, folder / "plots", fmt)
    if figures_only:
        return result
    (folder / "fit.json").write_text(json.dumps(to_json(result), indent=1, default=float))
    emergence = None
    if not load_kw.get("where") and not load_kw.get("best_per"):  # our probe columns, if any: emergence.md
        emergence = emergence_report.analyse_folder(results, n_boot=min(n_boot, 400), fmt=fmt)
        if emergence is None:
            (folder / "emergence.md").unlink(missing_ok=True)
    (folder / "report.md").write_text(report_text.markdown(result, figures, folder,
                                                          emergence.markdown if emergence else None))
    if not quiet:
        if emergence is not None:
            print("\n".join(emergence_report.table_lines(emergence.results)) + "\n")
        print(report_text.format_tables(result))
        print(f"\nwrote {folder / 'fit.json'}, {folder / 'report.md'} and {len(figures)} figures in {folder / 'plots'}")
    return result
