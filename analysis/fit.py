"""Typed results: a fitted law (parameters with 95% bootstrap intervals, samples, warnings), the checks every
form shares (intervals, correlations, identifiability, range), and the analysis of a whole table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import lse
from analysis.table import Table


@dataclass(kw_only=True)
class Fit:
    form: str
    formula: str
    params: dict  # name -> {"value", "ci_low", "ci_high"}
    n_points: int
    objective: float | None = None
    warnings: list[str] = field(default_factory=list)
    correlations: dict | None = None
    predict: object = None  # callable(**columns) -> loss, not serialised
    samples: dict | None = None  # name -> bootstrap samples, not serialised
    not_identified: dict = field(default_factory=dict)  # name -> why the data do not determine it
    # log_A and log_B of a Chinchilla point fit: its terms stay finite where A or B overflow (laws.chinchilla_loss)
    log_coefficients: dict | None = None
    # how the optimum was searched for, where a form records it: starts, pinned parameters, the distinct minima
    # the starts reached and the objective at a compared point (analysis.data_constrained)
    search: dict | None = None

    def value(self, name: str) -> float:
        return self.params[name]["value"]

    @property
    def pinned(self) -> set[str]:
        """Parameters held at given values (`scaling fit --fix`): neither fitted nor resampled."""
        return set((self.search or {}).get("fixed", {}))

    def to_json(self) -> dict:
        return {"formula": self.formula, "n_points": self.n_points, "objective": self.objective,
                "params": self.params, "not_identified": self.not_identified, "correlations": self.correlations,
                "warnings": self.warnings, **({"search": self.search} if self.search else {})}


def summarise(values: dict, samples: dict) -> dict:
    """{name: {value, ci_low, ci_high}}: the 95% percentile interval of each parameter's bootstrap samples. A
    percentile interval can miss the fitted value itself when the resamples are few or degenerate (a frontier of a
    handful of points, where many resamples drop its one large model); such an interval is widened to the fitted
    value and marked `widened`, so that no point estimate lies outside its own interval and judge() says why."""
    out = {}
    for name, v in values.items():
        lo, hi = lse.interval(samples[name]) if name in samples else (float("nan"), float("nan"))
        out[name] = {"value": float(v), "ci_low": lo, "ci_high": hi}
        if np.isfinite(v) and np.isfinite(lo) and np.isfinite(hi) and not lo <= v <= hi:
            out[name] |= {"ci_low": min(lo, float(v)), "ci_high": max(hi, float(v)), "widened": [lo, hi]}
    return out


def correlations(samples: dict, names: list[str]) -> dict:
    with np.errstate(divide="ignore", over="ignore"):  # log scale: coefficients span decades
        m = np.log(np.abs(np.column_stack([samples[n] for n in names])))
    ok = np.isfinite(m).all(1)
    if ok.sum() < 3:
        return {}
    c = np.corrcoef(m[ok].T)
    return {f"{a}~{b}": float(c[i, j]) for i, a in enumerate(names) for j, b in enumerate(names) if i < j}


def decades_spanned(p: dict) -> float | None:
    """How many orders of magnitude a positive parameter's 95% interval spans, when more than two; else None."""
    lo, hi = p["ci_low"], p["ci_high"]
    if np.isfinite(lo) and np.isfinite(hi) and lo > 0 and hi / lo > 100:
        return float(np.log10(hi / lo))
    return None


def identifiability(params: dict, names: list[str]) -> list[str]:
    out = []
    for n in names:
        p = params[n]
        if (decades := decades_spanned(p)) is not None:
            out.append(f"{n}: the 95% interval [{p['ci_low']:.3g}, {p['ci_high']:.3g}] spans {decades:.1f} orders "
                       f"of magnitude; the data cannot identify it")
    return out


MAX_EXPONENT = 5.0  # no scaling exponent measured in practice comes near; the fits start from 0 to 2
EXPONENTS = ("alpha", "beta", "alpha_N", "alpha_D", "alpha_S")
SCALES = ("E", "A", "B", "N_c", "D_c", "S_c", "R_star")  # positive coefficients, judged on a log scale
DERIVED = {"a": ("alpha", "beta"), "b": ("alpha", "beta"), "G": ("alpha", "beta")}
MIN_POINTS_PER_PARAMETER = 3


def judge(fit: Fit, n_free: int) -> Fit:
    """Mark what the data do not determine, so that it is reported as not identified rather than as an estimate:
    a parameter whose bootstrap interval has zero width (every resample returned the starting point), an
    exponent that runs beyond MAX_EXPONENT, and a derived quantity (a, b, G) resting on such an exponent. Warn when
    the fit has fewer than about 3 points per free parameter."""
    why = {}
    for name, p in fit.params.items():
        lo, hi, v = p["ci_low"], p["ci_high"], p["value"]
        if name in fit.pinned:
            continue
        if fit.samples and np.isfinite(lo) and np.isfinite(hi) and hi - lo <= 1e-9 * max(1.0, abs(v)):
            why[name] = "its 95% interval has zero width: every resample returned the same value"
        elif name in SCALES and (decades := decades_spanned(p)) is not None:
            why[name] = f"its 95% interval [{lo:.3g}, {hi:.3g}] spans {decades:.1f} orders of magnitude"
        elif name in EXPONENTS and not (abs(v) <= MAX_EXPONENT and (not np.isfinite(hi) or hi <= MAX_EXPONENT)):
            why[name] = (f"the fit or its interval [{lo:.3g}, {hi:.3g}] runs beyond {MAX_EXPONENT:g}: the law's "
                         f"term in it is not determined by the data")
    for name, sources in DERIVED.items():
        bad = [s for s in sources if s in why]
        if name in fit.params and bad and name not in why:
            why[name] = f"it depends on {' and '.join(bad)}, which the data do not determine"
    fit.not_identified = why
    said = {w.split(":")[0] for w in fit.warnings}  # identifiability() may have warned already
    fit.warnings = fit.warnings + [f"{k}: not identified ({v})" for k, v in why.items() if k not in said]
    fit.warnings += [f"{k}: the bootstrap's 95% interval [{p['widened'][0]:.4g}, {p['widened'][1]:.4g}] did not "
                     f"contain the fitted value {p['value']:.4g} (too few or degenerate resamples); widened to "
                     "include it" for k, p in fit.params.items() if "widened" in p and k not in why]
    if fit.n_points < MIN_POINTS_PER_PARAMETER * n_free:
        fit.warnings.append(f"{fit.n_points} points for {n_free} free parameters (fewer than "
                            f"{MIN_POINTS_PER_PARAMETER} per parameter): the fit is barely determined")
    return fit


def range_warning(x: np.ndarray, name: str) -> list[str]:
    decades = np.log10(x.max() / x.min())
    return [f"{name} spans only {decades:.2f} decades; exponents in {name} are poorly constrained"] \
        if decades < 1 else []


@dataclass(kw_only=True)
class Analysis:
    """Everything fitted on one table: the forms that applied (name -> Fit), the ones skipped with the reason,
    the IsoFLOP and frontier tables, compute-optimal rows beyond the sweep, the extrapolation check (as in
    fit.json), the table-wide warnings and the predictive terms of the joint law (analysis.predictive.Scatter)."""
    table: Table
    forms: dict[str, Fit]
    skipped: dict[str, str]
    extra: dict[str, pd.DataFrame]
    optimal: list[dict]
    extrapolation: dict | None
    warnings: list[str]
    n_boot: int
    scatter: object = None
    frontier_law: dict | None = None  # analysis.frontier_law.analyse
