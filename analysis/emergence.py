"""Emergence thresholds: is a metric's rise with scale a sharp transition, and is the jump real or a metric artefact?

Wei et al. (2022) call an ability emergent when it is absent at small scale and present at large scale; Schaeffer
et al. (2023) showed many such jumps are artefacts of discontinuous metrics (exact match), so each verdict on a
discontinuous metric is reported beside the verdict on its continuous counterpart (log-probability, per-token
accuracy, ...).

For one metric against one scale axis:

1. Orientation and normalisation: u = (y - chance) / (ceiling - chance), so 0 is chance and 1 the ceiling, rising
   with scale (metrics where lower is better, like loss, are flipped). Without a known chance or ceiling the data's
   own range is used and the floor is estimated from the fit. The axis is log10(scale) (or -loss for axis 'loss').
2. Four fits on u: constant (1 parameter); smooth, the better of a line in log scale and a power law on the error
   1 - u = A X^-a (2); a sigmoid lo + (hi - lo) / (1 + exp(-(x - m) / w)) (4); and a one-break broken power law on
   the error (Caballero et al. 2022), a + b X^-c0 (1 + (X / d)^(1/f))^(-c1 f) (6), reported for its break d
   (analysis.curve_fits). The first three are fitted under Student-t errors (NU = 10 degrees of freedom, scale
   fitted) and compared by that likelihood's BIC, -2 log L + (k + 1) log n: a few evaluations that failed (a model
   family scoring near zero among models that score 0.3) then cost every form about the same, where under least
   squares two such points can decide the comparison. The sigmoid's parameters are refined by least squares
   weighted as the t fit weighs each point; a point weighed under OUTLIER_WEIGHT is counted as an outlier.
   Fewer than MIN_SCALES distinct scales are "too few points".
3. A case bootstrap (rows resampled) refits the smooth and sigmoid forms; the sigmoid is stable when it beats the
   smooth form by delta-BIC >= 6 in at least 90% of resamples. The resamples' midpoints give its interval.
4. The test of a transition is a parametric bootstrap under the smooth form: series drawn from the smooth curve
   fitted under t errors plus t noise of its fitted scale; p is the share whose delta-BIC reaches the observed
   one, and a flag must survive Holm's correction over the m series of the call (a series not tested counts
   as p = 1).
   `emergent` needs all of: the points before the transition (1.5 10-90% widths below the midpoint, where the
   fitted rise is under 0.2% of the jump) within floor + 2 SE, at least two points above the midpoint
   significantly above the floor (> floor + 2 SE), a 10-90% width under `max_width` decades with grid points
   within `max_width` on both sides of the midpoint, delta-BIC >= 6, a stable sigmoid, and p <= 0.10 before the
   correction. `break`: the same, but the metric was not at its floor below the transition. `unresolved`: the
   sigmoid beats the smooth form by delta-BIC >= 6 but its jump falls between two grid points more than
   `max_width` decades apart, so its width cannot be told (no test is run: resamples that drop one side of the gap
   fit a line as well as a step). Otherwise `smooth` (the smooth form beats the constant by delta-BIC >= 6) or
   `flat`.
   `gradual emergence` (flagged, like `emergent`): a rise from a floor too broad for `emergent` -- what pooling
   model families of different compute efficiency gives, or a rise whose largest models fall back a little --
   needs: the points more than one 10-90% width below the midpoint (under 1.2% of the fitted rise) within
   floor + 2 SE but for one in ten (at least one when there are five or more; a family trained far more
   efficiently than the rest, say), at least two points significantly above the floor, a 10-90% width from
   `max_width` to GRADUAL_MAX_WIDTH decades, the sigmoid beating the smooth form by delta-BIC >= 10 (very strong
   evidence on Kass and Raftery's scale), and the test's p-value surviving Holm's correction (the case bootstrap
   is not asked: a broad rise of scattered points rarely gives the sigmoid a delta-BIC of 6 in 90% of resamples).
   A discontinuous metric flagged emergent whose continuous counterpart shows no sharp transition of its own
   (not emergent, break, unresolved, nor emergent before the correction) gets `metric artefact`.

SE: binomial, sqrt(p (1 - p) / n_items), when the number of evaluation items is known; otherwise the standard
deviation of the sigmoid's t errors, sigma sqrt(NU / (NU - 2)) (normalised units, at least 0.01).
Breakthroughness (BIG-bench, Srivastava et al. 2022): I / sqrt(median(dy^2)) over consecutive points sorted by
scale, with I = sign(argmax - argmin) (max - min).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.curve_fits import (
    NU,
    breakthroughness,
    fit_bnsl,
    fit_sigmoid,
    grid_delta_bic,
    robust_bics,
    sigmoid_grid,
    smooth_null,
)

DELTA_BIC = 6.0
SIGNIFICANCE = 0.10  # the sigmoid must win in at least 90% of resamples
MAX_WIDTH = 1.0  # decades (10% to 90% of the rise)
LOGIT_WIDTH = 2 * math.log(9)  # 10-90% width of a logistic in units of its scale w
GRADUAL_MAX_WIDTH = 2.5  # decades: broader rises are trends, not transitions
CLEAR_DELTA_BIC = 10.0  # "very strong" evidence on Kass and Raftery's scale
GRADUAL_OUTLIERS = 0.1  # share of the points before a broad rise allowed above the floor (at least 1 of 5 or more)
FLAGGED = ("emergent", "gradual emergence")
# a sigmoid and its scale are five parameters: with fewer distinct scales it passes through every point but one
MIN_SCALES = 6
OUTLIER_WEIGHT = 0.1  # a point the robust sigmoid fit weighs under this (|r| over 10 scales at NU = 10) is an outlier


@dataclass
class Series:
    """One metric against one scale axis."""
    task: str
    metric: str
    axis: str
    x: np.ndarray  # log10(scale), or -loss for axis "loss"
    y: np.ndarray  # raw metric values
    higher_is_better: bool = True
    chance: float | None = None
    ceiling: float | None = None
    n_items: np.ndarray | None = None  # evaluation items behind each point, for binomial SE
    discontinuous: bool = True
    counterpart: str | None = None  # the continuous metric of the same task shown beside it
    group: str | None = None
    counterpart_task: str | None = None  # the counterpart's task, when its column names another (no "task/" prefix)


def normalise(s: Series) -> tuple[np.ndarray, float, float, bool]:
    """u in chance..ceiling -> 0..1, rising with scale; returns (u, floor, ceiling, floor_known)."""
    y = s.y if s.higher_is_better else -s.y
    chance = None if s.chance is None else (s.chance if s.higher_is_better else -s.chance)
    ceiling = None if s.ceiling is None else (s.ceiling if s.higher_is_better else -s.ceiling)
    lo = chance if chance is not None else float(np.min(y))
    hi = ceiling if ceiling is not None else float(np.max(y))
    if hi <= lo:
        hi = lo + 1.0
    return (y - lo) / (hi - lo), lo, hi, chance is not None


def _standard_errors(s: Series, u: np.ndarray, lo: float, hi: float, resid_sd: float) -> np.ndarray:
    if s.n_items is not None and s.chance is not None and (s.ceiling or 1.0) == 1.0 and s.higher_is_better:
        n = np.maximum(np.asarray(s.n_items, float), 1)
        p = np.clip(s.y, 1 / n, 1 - 1 / n)
        return np.sqrt(p * (1 - p) / n) / (hi - lo)
    return np.full(len(u), max(resid_sd, 0.01))


def _bootstrap(x: np.ndarray, u: np.ndarray, n_boot: int, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Resampled rows as count vectors, every resample's sigmoid and smooth forms fitted at once under Student-t
    errors (on the sigmoid grid). Returns the share of resamples where the sigmoid fails to win by DELTA_BIC, the
    resamples' midpoints and delta-BICs."""
    n = len(u)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    counts = counts[np.array([len(np.unique(x[c > 0])) >= MIN_SCALES for c in counts], bool)] if n_boot else counts
    if not len(counts):
        return 1.0, np.array([]), np.array([])
    grid, basis = sigmoid_grid(x)
    rb = robust_bics(x, u, basis, counts)
    d_bic = rb["smooth"] - rb["sigmoid"]
    return float((1 + np.sum(d_bic < DELTA_BIC)) / (1 + len(d_bic))), grid[rb["fits"]["sigmoid"]["row"], 0], d_bic


def _criteria(x, u, se, floor, theta, d_bic, p_case, max_width) -> tuple[dict, float]:
    """The shape conditions for `emergent` (module docstring), and the gap between grid points around the
    midpoint."""
    lo_s, hi_s, m, logw = theta
    width = LOGIT_WIDTH * math.exp(logw)
    # "before the transition": 1.5 10-90% widths below the midpoint, where the fitted rise is under 0.2% of the
    # jump; points in the sigmoid's own lower tail (1 to 5% of it, say) are part of the transition, not its floor,
    # and with hundreds of items per point they are measurably above chance
    below, above = x < m - 1.5 * width, x > m
    xs = np.unique(x)
    left, right = xs[xs <= m], xs[xs > m]
    gap = float(right.min() - left.max()) if len(left) and len(right) else math.inf
    return {
        "rising": bool(hi_s > lo_s),
        "quiet_below": bool(below.any() and np.all(u[below] <= floor + 2 * se[below])),
        "two_above": int(np.sum(u[above] > floor + 2 * se[above])) >= 2,
        "narrow": width <= max_width,
        "resolved": gap <= max_width,  # the grid points either side of the midpoint are within max_width
        "sigmoid_better": d_bic >= DELTA_BIC,
        "stable": p_case <= SIGNIFICANCE,  # and in at least 90% of the case resamples
    }, gap


def _null_p(x: np.ndarray, rb: dict, n_sim: int, seed: int) -> float:
    """Parametric bootstrap under the smooth form: the share of series drawn from the smooth curve fitted under
    Student-t errors plus t noise of its fitted scale in which the sigmoid beats the smooth form by the observed
    robust delta-BIC (both on the sigmoid grid, unrefined; the simulated series fitted all at once). rb: the
    series' robust_bics."""
    fitted, sigma = smooth_null(rb)
    _, basis = sigmoid_grid(x)
    rng = np.random.default_rng(seed)
    simulated = fitted[None, :] + sigma * rng.standard_t(NU, (n_sim, len(fitted)))
    observed = rb["smooth"] - rb["sigmoid"]
    return float((1 + np.sum(grid_delta_bic(x, simulated, basis) >= observed)) / (1 + n_sim))


def _gradual(x, u, se, floor, theta, max_width, b) -> bool:
    """The shape conditions of `gradual emergence` (module docstring), before its test."""
    lo_s, hi_s, m, logw = theta
    width = LOGIT_WIDTH * math.exp(logw)
    below, above = x < m - width, x > m
    allowed = max(1, int(GRADUAL_OUTLIERS * below.sum())) if below.sum() >= 5 else 0
    return bool(hi_s > lo_s and below.any() and np.sum(u[below] > floor + 2 * se[below]) <= allowed
                and np.sum(u[above] > floor + 2 * se[above]) >= 2 and max_width < width <= GRADUAL_MAX_WIDTH
                and b["smooth"] - b["sigmoid"] >= CLEAR_DELTA_BIC)


def _verdict(c: dict, gap: float, width: float, max_width: float, b: dict, gradual: bool, test) -> tuple[str, float]:
    """The verdict and its p-value (NaN where no test was run); test() runs the parametric test (_null_p)."""
    if c["rising"] and c["narrow"] and c["resolved"] and c["two_above"] and c["sigmoid_better"] and c["stable"]:
        p = test()
        if p <= SIGNIFICANCE:  # a sharp transition; "break" where the metric was not at its floor below it
            return ("emergent" if c["quiet_below"] else "break"), p
    elif c["rising"] and c["two_above"] and gap > max_width and width <= gap and c["sigmoid_better"]:
        # a jump between two grid points further apart than max_width: its width cannot be told
        return "unresolved", math.nan
    elif gradual:
        return "gradual emergence", test()
    return ("smooth" if min(b["smooth"], b["sigmoid"]) <= b["constant"] - DELTA_BIC else "flat"), math.nan


def detect(s: Series, n_boot: int = 400, seed: int = 0, max_width: float = MAX_WIDTH) -> dict:
    """Fits, bootstrap and verdict for one series (before the correction for multiple tests)."""
    ok = np.isfinite(s.x) & np.isfinite(s.y)
    s = Series(**{**s.__dict__, "x": s.x[ok], "y": s.y[ok],
                  "n_items": None if s.n_items is None else np.asarray(s.n_items)[ok]})
    x = s.x
    out = {"task": s.task, "metric": s.metric, "axis": s.axis, "group": s.group, "n_points": len(x),
           "discontinuous": s.discontinuous, "counterpart": s.counterpart,
           "counterpart_task": s.counterpart_task or s.task}
    if len(np.unique(x)) < MIN_SCALES:
        return {**out, "verdict": "too few points", "p": math.nan}
    u, lo, hi, floor_known = normalise(s)
    rb = robust_bics(x, u)
    t_sig = rb["fits"]["sigmoid"]
    theta, _ = fit_sigmoid(x, u, t_sig["weights"])  # weighted as the t fit weighs each point
    bn = fit_bnsl(x, u)
    b = {"constant": rb["constant"], "smooth": rb["smooth"], "sigmoid": rb["sigmoid"]}
    lo_s, hi_s, m, logw = theta
    width = LOGIT_WIDTH * math.exp(logw)
    se = _standard_errors(s, u, lo, hi, t_sig["sigma"] * math.sqrt(NU / (NU - 2)))  # the t's standard deviation
    p_case, mids, d_bic = _bootstrap(x, u, n_boot, seed)
    m_lo, m_hi = (np.percentile(mids, [2.5, 97.5]) if len(mids) else (math.nan, math.nan))
    m_lo, m_hi = min(m_lo, m), max(m_hi, m)  # the grid's resolution must not exclude the refined estimate
    floor = 0.0 if floor_known else min(lo_s, hi_s)
    criteria, gap = _criteria(x, u, se, floor, theta, b["smooth"] - b["sigmoid"], p_case, max_width)
    gradual = _gradual(x, u, se, floor, theta, max_width, b)
    verdict, p = _verdict(criteria, gap, width, max_width, b, gradual, lambda: _null_p(x, rb, n_boot, seed))
    to_scale = (lambda v: -v) if s.axis == "loss" else (lambda v: 10 ** v)
    sign = 1 if s.higher_is_better else -1
    out.update({
        "verdict": verdict, "p": p, "p_case_bootstrap": p_case, "criteria": criteria,
        "threshold": to_scale(m), "threshold_low": to_scale(m_lo) if s.axis != "loss" else -m_hi,
        "threshold_high": to_scale(m_hi) if s.axis != "loss" else -m_lo,
        "width_decades": width, "grid_gap": gap, "jump": sign * (hi_s - lo_s) * (hi - lo),
        "breakthroughness": breakthroughness(x, s.y if s.higher_is_better else -s.y),
        "delta_bic": b["smooth"] - b["sigmoid"],
        "delta_bic_median": float(np.median(d_bic)) if len(d_bic) else math.nan, "bic": b,
        "smooth_form": "linear" if rb["linear"] <= rb["power"] else "power",
        "floor": "chance" if floor_known else "estimated",
        "fit": {"sigmoid": [float(v) for v in theta], "normalise": [lo, hi], "higher_is_better": s.higher_is_better},
        "bnsl_break": (to_scale(float(bn[0][4]) / math.log(10)) if bn else None),
        "outliers": int(np.sum(t_sig["weights"] < OUTLIER_WEIGHT)),
    })
    return out


def holm(results: list[dict], alpha: float = SIGNIFICANCE) -> None:
    """Holm's step-down correction over the tests' p-values; demotes a flag ('emergent', 'gradual emergence')
    that does not survive it."""
    # every analysed series counts: one that no test was run on (p NaN) is a null not rejected, p = 1
    tested = sorted((r for r in results if r["verdict"] != "too few points"),
                    key=lambda r: 1.0 if math.isnan(r.get("p", math.nan)) else r["p"])
    m = len(tested)
    stop = False
    for i, r in enumerate(tested):
        r["p_threshold"] = alpha / (m - i)
        if stop or not r["p"] <= r["p_threshold"]:
            stop = True
            r["survives_correction"] = False
            if r["verdict"] in FLAGGED:
                r["verdict"] = "not significant after correction"
        else:
            r["survives_correction"] = True


SHARP = (*FLAGGED, "unresolved", "break", "not significant after correction")  # a counterpart that also jumps


def pair_artefacts(results: list[dict]) -> None:
    """Beside each discontinuous metric, its continuous counterpart's verdict; 'metric artefact' when only the
    discontinuous one jumps."""
    by_key = {(r["task"], r["metric"], r["axis"], r["group"]): r for r in results}
    for r in results:
        key = (r.get("counterpart_task") or r["task"], r["counterpart"], r["axis"], r["group"])
        c = by_key.get(key) if r.get("counterpart") else None
        # a named counterpart always gets a verdict: "not analysed" when it is not among the metrics analysed
        r["counterpart_verdict"] = c["verdict"] if c else ("not analysed" if r.get("counterpart") else None)
        if c and r["discontinuous"] and r["verdict"] in FLAGGED and c["verdict"] not in SHARP:
            r["verdict"] = "metric artefact"


def analyse(series: list[Series], n_boot: int = 400, seed: int = 0, max_width: float = MAX_WIDTH) -> list[dict]:
    """Every series, Holm-corrected together. A bootstrap p-value is at least 1 / (n_boot + 1), so n_boot is raised
    to 2 m / alpha for m tests: otherwise the correction could reject nothing, whatever the data."""
    n_boot = max(n_boot, math.ceil(2 * len(series) / SIGNIFICANCE))
    results = [detect(s, n_boot, seed, max_width) for s in series]
    for r in results:
        r["n_boot"] = n_boot
    holm(results)
    pair_artefacts(results)
    return results


# ---- tables ---------------------------------------------------------------------------------------------------

LOWER_IS_BETTER = ("loss", "nll", "cross_entropy", "edit_distance", "icl_score", "perplexity", "bpb")
LOWER_IS_BETTER_WORDS = ("ppl", "bpc", "wer", "cer")  # whole words only: "ppl" is lm-eval's perplexity, not "apple"


def lower_is_better(name: str, column: str = "", named: tuple[str, ...] = ()) -> bool:
    """Whether a metric falls as models improve: by its name (LOWER_IS_BETTER anywhere in it, or a whole word of
    LOWER_IS_BETTER_WORDS), or because the user named its column (--lower-is-better)."""
    low = name.lower()
    return column in named or name in named or any(k in low for k in LOWER_IS_BETTER) or \
        any(w in LOWER_IS_BETTER_WORDS for w in re.split(r"[^a-z0-9]+", low))
CONTINUOUS = ("logprob", "per_digit", "token_accuracy", "edit_similarity", "icl_score", "loss", "nll",
              "cross_entropy", "brier")


def _task(col: str) -> str:
    """A metric column's task: what comes before its last "/" (ours: probe/<task>/<metric>), or the column itself."""
    return col.rpartition("/")[0].removeprefix("probe/") or col


def series_from_frame(df: pd.DataFrame, metrics: list[str], axes: list[str], chance: dict | None = None,
                      ceiling: dict | None = None, group: str | None = None, pairs: dict | None = None,
                      items: dict | None = None, lower: tuple[str, ...] = ()) -> list[Series]:
    """Series for every metric x axis (x group). Metric columns named 'task/metric' are grouped by task; the
    direction and kind (discontinuous or continuous) follow the metric's name; `pairs` maps a discontinuous
    metric column to its continuous counterpart column. Chance may be a number or the name of a column."""
    chance, ceiling, pairs, items = chance or {}, ceiling or {}, pairs or {}, items or {}
    out = []
    groups = [(None, df)] if group is None else [(str(g), d) for g, d in df.groupby(group)]
    for axis in axes:
        for g, d in groups:
            scale = pd.to_numeric(d[axis], errors="coerce").to_numpy(float)
            x = -scale if axis == "loss" else np.log10(np.where(scale > 0, scale, np.nan))
            for col in metrics:
                task, name = _task(col), col.rpartition("/")[2]
                c = chance.get(col)
                if isinstance(c, str):
                    c = float(pd.to_numeric(d[c], errors="coerce").mean())
                out.append(Series(
                    task=task, metric=name or col, axis=axis, x=x, y=pd.to_numeric(d[col], errors="coerce")
                    .to_numpy(float), higher_is_better=not lower_is_better(name or col, col, lower),
                    chance=c, ceiling=ceiling.get(col),
                    n_items=d[items[col]].to_numpy(float) if col in items else None,
                    discontinuous=not any(k in (name or col).lower() for k in CONTINUOUS),
                    counterpart=(pairs[col].rpartition("/")[2] or pairs[col]) if col in pairs else None, group=g,
                    counterpart_task=_task(pairs[col]) if col in pairs else None))
    return out
