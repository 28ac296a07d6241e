"""Emergence thresholds: is a metric's rise with scale a sharp transition, and is the jump real or a metric artefact?

Wei et al. (2022) call an ability emergent when it is absent at small scale and present at large scale; Schaeffer
et al. (2023) showed many such jumps are artefacts of discontinuous metrics (exact match), so each verdict on a
discontinuous metric is reported beside the verdict on its continuous counterpart (log-probability, per-token
accuracy, ...).

For one metric against one scale axis:

1. Orientation and normalisation: u = (y - chance) / (ceiling - chance), so 0 is chance and 1 the ceiling, rising
   with scale (metrics where lower is better, like loss, are flipped). Without a known chance or ceiling the data's
   own range is used and the floor is estimated from the fit. The axis is log10(scale) (or -loss for axis 'loss').
2. Four fits by least squares on u: constant (1 parameter); smooth, the better of a line in log scale and a power
   law on the error 1 - u = A X^-a (2); a sigmoid lo + (hi - lo) / (1 + exp(-(x - m) / w)) (4); and a one-break
   broken power law on the error (Caballero et al. 2022), a + b X^-c0 (1 + (X / d)^(1/f))^(-c1 f) (6), reported
   for its break d (analysis.curve_fits). Models are compared by BIC = n log(SSE / n) + k log n (SSE floored at
   n (1e-3)^2).
3. A case bootstrap (rows resampled) refits the smooth and sigmoid forms; p is the share of resamples in which the
   sigmoid fails to beat the smooth form by delta-BIC >= 6.
4. `emergent` needs all of: the points before the transition (1.5 10-90% widths
   below the midpoint, where the fitted rise is under 0.2% of the jump) within floor + 2 SE, at least two points
   above the midpoint significantly above the floor (> floor + 2 SE), a 10-90% width under `max_width` decades,
   p <= 0.10 (sigmoid wins in >= 90% of resamples), and p <= 0.10 / m after Holm's correction over the m tests of
   the call. `unresolved`: the sigmoid beats the smooth form by delta-BIC >= 6 on the full data but its jump falls
   between two grid points more than `max_width` decades apart, so its width cannot be told (the bootstrap is not
   asked: resamples that drop one side of the gap fit a line as well as a step). Otherwise `smooth` (the smooth form beats the constant by delta-BIC >= 6) or `flat`.
   `gradual emergence` (flagged, like `emergent`): a rise from a floor too broad for `emergent` -- what pooling
   model families of different compute efficiency gives, or a rise whose largest models fall back a little --
   needs: the points more than one 10-90% width below the midpoint (under 1.2% of the fitted rise) within
   floor + 2 SE but for one in ten (at least one when there are five or more; a family trained far more
   efficiently than the rest, say), at least two points significantly above the floor, a 10-90% width from
   `max_width` to GRADUAL_MAX_WIDTH decades, the sigmoid beating the smooth form by delta-BIC >= 10 (very strong
   evidence on Kass and Raftery's scale), and a parametric-bootstrap p-value under the smooth form (datasets
   drawn from the fitted smooth curve plus its residual scatter; p is the share whose delta-BIC reaches the
   observed one) that survives Holm's correction.
   A discontinuous metric flagged emergent whose continuous counterpart shows no sharp transition of its own
   (not emergent, break, unresolved, nor emergent before the correction) gets `metric artefact`.

SE: binomial, sqrt(p (1 - p) / n_items), when the number of evaluation items is known; otherwise the residual
standard deviation of the sigmoid fit (normalised units, at least 0.01).
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
    bic,
    breakthroughness,
    fit_bnsl,
    fit_sigmoid,
    fit_smooth,
    grid_delta_bic,
    profile,
    sigmoid_grid,
    smooth_bic,
    smooth_curve,
)

DELTA_BIC = 6.0
SIGNIFICANCE = 0.10  # the sigmoid must win in at least 90% of resamples
MAX_WIDTH = 1.0  # decades (10% to 90% of the rise)
LOGIT_WIDTH = 2 * math.log(9)  # 10-90% width of a logistic in units of its scale w
GRADUAL_MAX_WIDTH = 2.5  # decades: broader rises are trends, not transitions
CLEAR_DELTA_BIC = 10.0  # "very strong" evidence on Kass and Raftery's scale
GRADUAL_OUTLIERS = 0.1  # share of the points before a broad rise allowed above the floor (at least 1 of 5 or more)
FLAGGED = ("emergent", "gradual emergence")


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
    """Resampled rows as count vectors, every resample's sigmoid and smooth fits profiled at once. Returns p (the
    share of resamples where the sigmoid fails to win by DELTA_BIC), the resamples' midpoints and delta-BICs."""
    n = len(u)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    counts = counts[np.array([len(np.unique(x[c > 0])) >= 4 for c in counts], bool)] if n_boot else counts
    grid, basis = sigmoid_grid(x)
    sse_b, _, _ = profile(basis, u, counts)
    best = np.argmin(sse_b, 1)
    sb_lin, sb_pow = fit_smooth(x, u, counts)
    d_bic = smooth_bic(sb_lin, sb_pow, n) - np.vectorize(bic)(sse_b[np.arange(len(best)), best], n, 4)
    p = float((1 + np.sum(d_bic < DELTA_BIC)) / (1 + len(d_bic))) if len(d_bic) else 1.0
    return p, grid[best, 0], d_bic


def _criteria(x, u, se, floor, theta, p, max_width) -> tuple[dict, float]:
    """The conditions for `emergent` (module docstring), and the gap between grid points around the midpoint."""
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
        "sigmoid_wins": p <= SIGNIFICANCE,
    }, gap


def _null_p(x: np.ndarray, u: np.ndarray, n_sim: int, seed: int) -> float:
    """Parametric bootstrap under the smooth form: the share of datasets drawn from the fitted smooth curve plus
    Gaussian noise of its residual scatter in which the sigmoid beats the smooth form by the observed delta-BIC
    (both on the sigmoid grid, unrefined)."""
    fitted = smooth_curve(x, u)
    sd = float(np.sqrt(np.sum((u - fitted) ** 2) / max(len(u) - 3, 1)))
    _, basis = sigmoid_grid(x)
    observed = grid_delta_bic(x, u, basis)
    rng = np.random.default_rng(seed)
    reached = sum(grid_delta_bic(x, fitted + sd * rng.standard_normal(len(u)), basis) >= observed
                  for _ in range(n_sim))
    return (1 + reached) / (1 + n_sim)


def _gradual(x, u, se, floor, theta, max_width, b) -> bool:
    """The shape conditions of `gradual emergence` (module docstring), before its test."""
    lo_s, hi_s, m, logw = theta
    width = LOGIT_WIDTH * math.exp(logw)
    below, above = x < m - width, x > m
    allowed = max(1, int(GRADUAL_OUTLIERS * below.sum())) if below.sum() >= 5 else 0
    return bool(hi_s > lo_s and below.any() and np.sum(u[below] > floor + 2 * se[below]) <= allowed
                and np.sum(u[above] > floor + 2 * se[above]) >= 2 and max_width < width <= GRADUAL_MAX_WIDTH
                and b["smooth"] - b["sigmoid"] >= CLEAR_DELTA_BIC)


def _verdict(criteria: dict, gap: float, width: float, max_width: float, b: dict) -> str:
    c = criteria
    if all(c.values()):
        return "emergent"
    if c["rising"] and c["narrow"] and c["sigmoid_wins"] and c["two_above"]:
        return "break"  # a sharp transition, but the metric was not at its floor below it
    if c["rising"] and c["two_above"] and gap > max_width and width <= gap and \
            b["smooth"] - b["sigmoid"] >= DELTA_BIC:
        # the resamples cannot decide here: any that drop one side of the gap fit a line as well as a step
        return "unresolved"
    return "smooth" if min(b["smooth"], b["sigmoid"]) <= b["constant"] - DELTA_BIC else "flat"


def detect(s: Series, n_boot: int = 400, seed: int = 0, max_width: float = MAX_WIDTH) -> dict:
    """Fits, bootstrap and verdict for one series (before the correction for multiple tests)."""
    ok = np.isfinite(s.x) & np.isfinite(s.y)
    s = Series(**{**s.__dict__, "x": s.x[ok], "y": s.y[ok],
                  "n_items": None if s.n_items is None else np.asarray(s.n_items)[ok]})
    x = s.x
    out = {"task": s.task, "metric": s.metric, "axis": s.axis, "group": s.group, "n_points": len(x),
           "discontinuous": s.discontinuous, "counterpart": s.counterpart,
           "counterpart_task": s.counterpart_task or s.task}
    if len(np.unique(x)) < 4:
        return {**out, "verdict": "too few points", "p": math.nan}
    u, lo, hi, floor_known = normalise(s)
    n = len(u)
    theta, sse_sig = fit_sigmoid(x, u)
    sse_lin, sse_pow = fit_smooth(x, u)
    bn = fit_bnsl(x, u)
    b = {"constant": bic(float(np.sum((u - u.mean()) ** 2)), n, 1),
         "smooth": float(smooth_bic(sse_lin, sse_pow, n)[0]), "sigmoid": bic(sse_sig, n, 4),
         "bnsl": bic(bn[1], n, 6) if bn else None}
    lo_s, hi_s, m, logw = theta
    width = LOGIT_WIDTH * math.exp(logw)
    se = _standard_errors(s, u, lo, hi, math.sqrt(sse_sig / max(n - 4, 1)))
    p, mids, d_bic = _bootstrap(x, u, n_boot, seed)
    m_lo, m_hi = (np.percentile(mids, [2.5, 97.5]) if len(mids) else (math.nan, math.nan))
    m_lo, m_hi = min(m_lo, m), max(m_hi, m)  # the grid's resolution must not exclude the refined estimate
    floor = 0.0 if floor_known else min(lo_s, hi_s)
    criteria, gap = _criteria(x, u, se, floor, theta, p, max_width)
    verdict, p_case = _verdict(criteria, gap, width, max_width, b), p
    if verdict not in ("emergent", "break", "unresolved") and _gradual(x, u, se, floor, theta, max_width, b):
        # the case bootstrap asks whether the sigmoid wins by 6 in 90% of resamples, which a broad rise of
        # scattered points (several model families) rarely does; the test of a broad rise is against the null
        # of the smooth form itself
        verdict = "gradual emergence"
        p = _null_p(x, u, n_boot, seed)
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
        "smooth_form": "linear" if bic(sse_lin[0], n, 2) <= bic(sse_pow[0], n, 3) else "power",
        "floor": "chance" if floor_known else "estimated",
        "fit": {"sigmoid": [float(v) for v in theta], "normalise": [lo, hi], "higher_is_better": s.higher_is_better},
        "bnsl_break": (to_scale(float(bn[0][4]) / math.log(10)) if bn else None),
    })
    return out


def holm(results: list[dict], alpha: float = SIGNIFICANCE) -> None:
    """Holm's step-down correction over the tests' p-values; demotes a flag ('emergent', 'gradual emergence')
    that does not survive it."""
    tested = sorted((r for r in results if not math.isnan(r.get("p", math.nan))), key=lambda r: r["p"])
    m = len(tested)
    stop = False
    for i, r in enumerate(tested):
        r["p_threshold"] = alpha / (m - i)
        if stop or r["p"] > r["p_threshold"]:
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
