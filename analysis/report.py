"""Fit every applicable form to a table, check extrapolation, write fit.json, the figures and report.md.

fit.json schema:
    {"source": str, "n_rows": int, "excluded": [str],
     "forms": {form: {"formula": str, "n_points": int, "objective": float | null,
                      "params": {name: {"value": float, "ci_low": float, "ci_high": float}},
                      "not_identified": {name: why},
                      "correlations": {"p~q": float} | null, "warnings": [str]}},
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
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import emergence_report, extrapolation, frontier_law, isoflop, laws, lse, plots, predictive
from analysis.fit import Analysis, judge
from analysis.table import COUNTS, Table, TooFewToFit, load, results_folder


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
               noise: float | None = None) -> tuple[dict, dict, dict]:
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
    law = laws.muennighoff if data_law == "two-stage" else laws.muennighoff_one_rstar
    if "chinchilla" in forms:
        add(_safe(skipped, law.__name__, law, t, forms["chinchilla"], n_boot=min(n_boot, 200), seed=seed))
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


# The variant of each approach that speaks for it: Approach 2 as Porian et al. (2024) published it.
APPROACHES = {"frontier": "Approach 1 (compute frontier)", "isoflop_akima": "Approach 2 (IsoFLOP minima)",
              "chinchilla": "Approach 3 (joint law)"}


def disagreements(forms: dict) -> list[str]:
    """A warning for every pair of Hoffmann et al.'s approaches whose 95% intervals on a (N_opt ~ C^a) are
    disjoint: they cannot both be right about how to spend the next budget."""
    out = []
    have = [k for k in APPROACHES if k in forms and "a" in forms[k].params]
    for i, x in enumerate(have):
        for y in have[i + 1:]:
            p, q = forms[x].params["a"], forms[y].params["a"]
            if p["ci_high"] < q["ci_low"] or q["ci_high"] < p["ci_low"]:
                out.append(f"methods disagree: a = {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] from "
                           f"{APPROACHES[x]} but {q['value']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}] from "
                           f"{APPROACHES[y]}: the intervals do not overlap")
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
            noise: float | None = None) -> Analysis:
    forms, skipped, extra = _fit_forms(t, n_boot, seed, method, data_law, noise)
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


def format_tables(result: Analysis) -> str:
    lines = []
    t = result.table
    lines.append(f"{t.source}: {len(t.df)} rows used" + (f"; excluded: {'; '.join(t.excluded)}" if t.excluded else ""))
    for name, f in result.forms.items():
        lines.append("")
        lines.append(f"{name}: {f.formula}   ({f.n_points} points)")
        lines.append(f"  {'parameter':<16}{'value':>12}{'95% low':>12}{'95% high':>12}")
        for p, v in f.params.items():
            value = "not ident." if p in f.not_identified else format(v["value"], ">12.4g")
            lines.append(f"  {p:<16}{value:>12}{v['ci_low']:>12.4g}{v['ci_high']:>12.4g}")
        for w in f.warnings:
            lines.append(f"  warning: {w}")
    for name, why in result.skipped.items():
        lines.append(f"\n{name}: not fitted ({why})")
    for w in result.warnings:
        lines.append(f"\nwarning: {w}")
    if f := result.frontier_law:  # the answer's lines, without their Markdown
        lines.append("")
        lines += [line[2:].replace("**", "").replace("`", "") for line in frontier_law.answer_lines(f)]
    e = result.extrapolation
    if e:
        lines.append(f"\nextrapolation: Chinchilla law fitted on {e['n_fit']} runs, predicting {e['holdout']}:")
        for r in e["rows"]:
            lines.append(f"  N={r['N']:.3g} D={r['D']:.3g} C={r['C']:.3g}: loss {r['loss']:.4f}, predicted "
                         f"{r['predicted']:.4f} [{r['predicted_low']:.4f}, {r['predicted_high']:.4f}], "
                         f"error {100 * r['rel_error']:+.2f}%{'' if r['inside'] else ' (outside)'}")
        lines.append(f"  max |relative error| = {100 * e['max_abs_rel_error']:.2f}%, {e['inside']} of "
                     f"{len(e['rows'])} inside their 95% intervals ({e['interval']}); "
                     f"{e['inside_parameter_only']} inside the parameter-only ones")
    return "\n".join(lines)


def build(results: str | Path, quiet: bool = True, n_boot: int = laws.N_BOOT, fmt: str = "png", holdout_above=None,
          holdout_top=None, figures_only: bool = False, data_law: str = "two-stage", noise: float | None = None,
          **load_kw) -> Analysis:
    """The whole analysis of a results folder (or table file): fit.json, plots/, report.md (only the figures
    with figures_only)."""
    folder = results_folder(results)
    t = load(results, **load_kw)
    try:
        result = fit_all(t, n_boot=n_boot, holdout_above=holdout_above, holdout_top=holdout_top, data_law=data_law,
                         noise=noise)
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
    (folder / "report.md").write_text(markdown(result, figures, folder, emergence.markdown if emergence else None))
    if not quiet:
        if emergence is not None:
            print("\n".join(emergence_report.table_lines(emergence.results)) + "\n")
        print(format_tables(result))
        print(f"\nwrote {folder / 'fit.json'}, {folder / 'report.md'} and {len(figures)} figures in {folder / 'plots'}")
    return result


def _row_interval(r: dict, k: str) -> str:
    """A compute-optimal row's value with its interval: 'v [low, high]'."""
    return f"{r[k]:.3g} [{r.get(k + '_low', math.nan):.3g}, {r.get(k + '_high', math.nan):.3g}]"


def _predictive(r: dict) -> str:
    """', predictive [low, high]' for an optimal row's loss, when it has one."""
    if "loss_predictive_low" not in r:
        return ""
    return f" (one run: 95% predictive [{r['loss_predictive_low']:.3g}, {r['loss_predictive_high']:.3g}])"


def _interval(fit, name: str, fmt: str = ".3g") -> str:
    """A fitted parameter with its interval, or 'not identified' with the interval when the data do not
    determine it (analysis.fit.judge): never an estimate the data cannot support."""
    p = fit.params[name]
    value = "not identified" if name in fit.not_identified else f"{p['value']:{fmt}}"
    return f"{value} [{p['ci_low']:{fmt}}, {p['ci_high']:{fmt}}]"


def _allocation_unknown(result: Analysis) -> str | None:
    chin = result.forms.get("chinchilla")
    return chin.not_identified.get("a") if chin is not None else None


def answer(result: Analysis) -> list[str]:
    """The report's first section: exponents, the held-out error, where to spend the next budget, and whether the
    approaches agree, each with its 95% interval."""
    out = ["## The answer", ""]
    if result.frontier_law:
        out += frontier_law.answer_lines(result.frontier_law)
    chin = result.forms.get("chinchilla")
    if chin is not None:
        out.append(f"- Joint law (Approach 3): alpha = {_interval(chin, 'alpha')}, beta = {_interval(chin, 'beta')}, "
                   f"a = beta / (alpha + beta) = {_interval(chin, 'a')}, E = {_interval(chin, 'E')}.")
    for form in ("frontier", "isoflop_akima"):
        if form in result.forms:
            out.append(f"- {APPROACHES[form]}: a = {_interval(result.forms[form], 'a')}.")
    e = result.extrapolation
    if e:
        noise = e.get("seed_noise")
        seeds = (f"; seed-to-seed standard deviation {100 * noise['rel_sd']:.2f}% of loss ({noise['cells']} cells, "
                 f"{noise['runs']} runs)" if noise else "; no seed replicates")
        out.append(f"- Held out {e['holdout']}: largest error **{100 * e['max_abs_rel_error']:.2f}%**, "
                   f"{e['inside']} of {len(e['rows'])} inside their 95% predictive intervals "
                   f"({e['inside_parameter_only']} inside the parameter-only ones){seeds}.")
        if m := e.get("noise_and_misfit"):
            out.append(f"- Averaged over the seeds of each held-out cell: largest error "
                       f"{100 * m['max_abs_rel_error']:.2f}%; {_misfit_verdict(m)}.")
    if result.optimal and (why := _allocation_unknown(result)):
        out.append(f"- Compute-optimal N and D beyond the sweep: not identified (a: {why}).")
    else:
        out += [f"- At C = {r['C']:.3g} FLOPs: N_opt = {_row_interval(r, 'N_opt')}, D_opt = "
                f"{_row_interval(r, 'D_opt')}, loss {_row_interval(r, 'loss')}{_predictive(r)}."
                for r in result.optimal[:2]]
    out += [f"- **Warning**: {w}." for w in disagreements(result.forms)]
    return out + [""] if len(out) > 2 else []


def _misfit_verdict(m: dict) -> str:
    if m["systematic"] is None:
        return "the law's predictions are not all finite, so noise and misfit cannot be told apart"
    what = ("a misfit beyond the held-out runs' noise, which more seeds would not average away" if m["systematic"]
            else "within the held-out runs' noise")
    return (f"mean error {100 * math.expm1(m['mean_log_error']):+.2f}% against a seed-noise standard error of "
            f"{100 * m['mean_log_error_se']:.2f}% (held-out seed sd {100 * m['seed_rel_sd']:.2f}%): {what}")


def _extrapolation_section(e: dict) -> list[str]:
    noise = e.get("seed_noise")
    out = ["## Extrapolation check", "",
           (f"The Chinchilla law refitted on {e['n_fit']} runs predicts {e['holdout']}. Intervals: the "
            f"parameters' (bootstrap refits only) and the {e['interval']}."),
           "", "| N | D | C | loss | predicted | 95% parameters | 95% predictive | error | inside |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['N']:.3g} | {r['D']:.3g} | {r['C']:.3g} | {r['loss']:.4f} | {r['predicted']:.4f} | "
            f"[{r['parameter_low']:.4f}, {r['parameter_high']:.4f}] | "
            f"[{r['predicted_low']:.4f}, {r['predicted_high']:.4f}] | {100 * r['rel_error']:+.2f}% | "
            f"{'yes' if r['inside'] else '**no**'} |" for r in e["rows"]]
    out += ["", (f"Largest relative error: **{100 * e['max_abs_rel_error']:.2f}%**; {e['inside']} of "
                 f"{len(e['rows'])} inside their predictive intervals, {e['inside_parameter_only']} inside the "
                 "parameter-only ones."), ""]
    if noise:
        out += [f"Seed-to-seed standard deviation of loss: {100 * noise['rel_sd']:.2f}% (pooled over {noise['cells']} "
                f"cells, {noise['runs']} runs, {noise['dof']} degrees of freedom; per cell: "
                + ", ".join(f"N {c['N']:.3g} D {c['D']:.3g}: {100 * c['rel_sd']:.2f}%" for c in noise["per_cell"])
                + ").", ""]
    if m := e.get("noise_and_misfit"):
        out += [(f"Noise against misfit: each held-out cell's mean loss over its seeds and its error, also in units "
                 f"of the noise of that mean (the held-out replicates' pooled seed sd, {100 * m['seed_rel_sd']:.2f}% "
                 f"over {m['seed_cells']} cells, over the square root of the cell's runs)."), "",
                "| N | D | runs | mean loss | predicted | error | seed sd | error / noise |",
                "|---|---|---|---|---|---|---|---|"]
        for c in m["cells"]:
            sd = "-" if c["seed_rel_sd"] is None else f"{100 * c['seed_rel_sd']:.2f}%"
            units = "-" if c["noise_units"] is None else f"{c['noise_units']:+.1f}"
            out.append(f"| {c['N']:.3g} | {c['D']:.3g} | {c['runs']} | {c['loss']:.4f} | {c['predicted']:.4f} | "
                       f"{100 * c['rel_error']:+.2f}% | {sd} | {units} |")
        out += ["", f"Over all held-out runs: {_misfit_verdict(m)}.", ""]
    return out


def markdown(result: Analysis, figures: list[Path], folder: Path, emergence: str | None = None) -> str:
    t = result.table
    out = [f"# Scaling report: {t.source}", "",
           (f"{len(t.df)} runs used; N from {t.df['N'].min():.3g} to {t.df['N'].max():.3g} non-embedding "
           f"parameters, D from {t.df['D'].min():.3g} to {t.df['D'].max():.3g} tokens, C from "
           f"{t.df['C'].min():.3g} to {t.df['C'].max():.3g} FLOPs ({COUNTS[t.count]}); loss in {t.loss_unit}.")]
    if t.excluded:
        out += ["", "Excluded: " + "; ".join(t.excluded) + "."]
    out += [""] + answer(result)
    if result.frontier_law:
        out += frontier_law.section(result.frontier_law)
    if result.extrapolation:
        out += _extrapolation_section(result.extrapolation)
    n = result.n_boot
    out += ["## Fitted laws", "", (f"95% intervals from {n:,} bootstrap resamples of runs ({min(n, 200):,} for "
                                   "the Kaplan and data-constrained forms and the extrapolation check)."), ""]
    for name, f in result.forms.items():
        out += [f"### {name}: `{f.formula}`", "", "| parameter | value | 95% interval |", "|---|---|---|"]
        out += [f"| {p} | {'not identified' if p in f.not_identified else format(v['value'], '.4g')} | "
                f"[{v['ci_low']:.4g}, {v['ci_high']:.4g}] |" for p, v in f.params.items()]
        out += [f"\n> warning: {w}" for w in f.warnings] + [""]
    if result.skipped:
        out += ["Not fitted: " + "; ".join(f"{k} ({v})" for k, v in result.skipped.items()) + ".", ""]
    out += [f"> warning: {w}" for w in result.warnings]
    if result.optimal and (why := _allocation_unknown(result)):
        out += ["## Compute-optimal allocation beyond the sweep (Chinchilla fit, C = 6ND)", "",
                f"Not identified: the allocation exponent a is not determined by the data ({why}).", ""]
    elif result.optimal:
        out += ["## Compute-optimal allocation beyond the sweep (Chinchilla fit, C = 6ND)", "",
                "Brackets: 95% intervals of the law's parameters; the last column is where one run trained at that "
                "allocation should land (predictive: " + result.scatter.describe() + ").", "",
                "| C (FLOPs) | N_opt | D_opt | tokens / parameter | predicted loss | 95% predictive |",
                "|---|---|---|---|---|---|"]
        for r in result.optimal:
            cells = [_row_interval(r, k) for k in ("N_opt", "D_opt", "tokens_per_param", "loss")]
            cells.append(f"[{r.get('loss_predictive_low', math.nan):.3g}, {r.get('loss_predictive_high', math.nan):.3g}]")
            out.append(f"| {r['C']:.3g} | " + " | ".join(cells) + " |")
        out.append("")
    if emergence:
        out += [emergence, ""]
    if figures:
        out += ["## Figures", ""] + [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures]
    return "\n".join(out) + "\n"
