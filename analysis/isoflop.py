"""Compute-optimal scaling from the data directly (Hoffmann et al. 2022, Approaches 1 and 2).

Approach 1 -- the compute frontier: for log-spaced compute values, the lowest loss reached by any run (along
its learning curve when curves are available, else its final point); N_opt(C) ~ C^a and D_opt(C) ~ C^b are
power laws fitted (least squares in log-log) to the N and D of the frontier points.

Approach 2 -- IsoFLOP profiles: runs grouped by compute budget; per budget, loss is fitted against log N with a
parabola (and, separately, an Akima interpolant); the minimum gives N_opt(C), and D_opt = C / (6 N_opt).
Budgets whose minimum sits at the edge of the sampled N (the profile is not bracketed) are dropped and
reported. a and b come from log-log fits over budgets; the bootstrap resamples runs within each budget.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator

from analysis.fit import Fit, summarise
from analysis.table import Table


def budgets(df: pd.DataFrame, tolerance: float = 0.1) -> pd.Series:
    """A budget label per row: the 'budget' column, else C clustered within `tolerance` in log10."""
    if "budget" in df and df["budget"].notna().all():
        return df["budget"].astype(float)
    logc = np.log10(df["C"].to_numpy(float))
    order = np.argsort(logc)
    labels = np.empty(len(df))
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or logc[order[i]] - logc[order[start]] > tolerance:
            group = order[start:i]
            labels[group] = 10 ** np.median(logc[group])
            start = i
    return pd.Series(labels, index=df.index)


def profile_minimum(logn: np.ndarray, loss: np.ndarray, how: str = "parabola") -> float | None:
    """log N at the minimum of one IsoFLOP profile, or None if the minimum is not inside the sampled range."""
    if len(logn) < 3:
        return None
    # A bootstrap resample repeats points: average repeats so both methods see distinct, increasing log N.
    logn, inverse = np.unique(logn, return_inverse=True)
    loss = np.bincount(inverse, weights=loss) / np.bincount(inverse)
    if len(logn) < 3:
        return None
    if how == "parabola":
        c2, c1, _ = np.polyfit(logn, loss, 2)
        if c2 <= 0:
            return None
        x = -c1 / (2 * c2)
    else:
        fine = np.linspace(logn[0], logn[-1], 2001)
        x = fine[np.argmin(Akima1DInterpolator(logn, loss)(fine))]
    edge = 0.02 * (logn[-1] - logn[0])
    if not logn[0] + edge < x < logn[-1] - edge:
        return None
    return float(x)


def _fit_exponents(C: np.ndarray, n_opt: np.ndarray) -> tuple[float, float, float, float]:
    """log N_opt = a log C + log k_N; D_opt = C / (6 N_opt). Returns a, k_N, b, k_D."""
    a, log_kn = np.polyfit(np.log(C), np.log(n_opt), 1)
    d_opt = C / (6 * n_opt)
    b, log_kd = np.polyfit(np.log(C), np.log(d_opt), 1)
    return a, np.exp(log_kn), b, np.exp(log_kd)


def approach2(t: Table, how: str = "parabola", n_boot: int = 1000, seed: int = 0) -> tuple[Fit, pd.DataFrame]:
    df = t.df.copy()
    df["budget"] = budgets(df)
    groups = {b: g for b, g in df.groupby("budget") if len(g) >= 3}
    if len(groups) < 2:
        raise ValueError("IsoFLOP analysis needs at least 2 compute budgets with 3 or more runs each")

    def minima(resample=None):
        out = {}
        for b, g in groups.items():
            idx = np.arange(len(g)) if resample is None else resample.integers(0, len(g), len(g))
            x = profile_minimum(np.log(g["N"].to_numpy(float))[idx], g["loss"].to_numpy(float)[idx], how)
            if x is not None:
                out[b] = np.exp(x)
        return out

    point = minima()
    dropped = sorted(set(groups) - set(point))
    if len(point) < 2:
        raise ValueError(f"IsoFLOP: only {len(point)} budget(s) have a bracketed minimum; sample N more widely")
    C = np.array(sorted(point))
    a, kn, b, kd = _fit_exponents(C, np.array([point[c] for c in C]))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        m = minima(rng)
        if len(m) >= 2:
            cc = np.array(sorted(m))
            boots.append(_fit_exponents(cc, np.array([m[c] for c in cc])))
    boots = np.array(boots).reshape(-1, 4)
    names = ["a", "k_N", "b", "k_D"]
    params = summarise(dict(zip(names, (a, kn, b, kd))), {n: boots[:, i] for i, n in enumerate(names)})
    warnings = [f"budget {c:.3g}: minimum at the edge of the sampled N; dropped" for c in dropped]
    if len(point) < 3:
        warnings.append(f"only {len(point)} budgets with a bracketed minimum: exponents rest on few points")
    table = pd.DataFrame({"C": C, "N_opt": [point[c] for c in C], "D_opt": C / (6 * np.array([point[c] for c in C]))})
    fit = Fit(form=f"isoflop_{how}", formula="N_opt = k_N C^a, D_opt = k_D C^b (IsoFLOP minima)", params=params,
              n_points=len(df), warnings=warnings, predict=lambda C_: kn * np.asarray(C_, float) ** a,
              samples={n: boots[:, i] for i, n in enumerate(names)} if len(boots) else None)
    return fit, table


def frontier(t: Table, n_bins: int = 12) -> pd.DataFrame:
    """The lowest-loss point per log-spaced compute bin, from learning curves when available."""
    if t.curves is not None and len(t.curves):
        c = t.curves
        pts = pd.DataFrame({"N": c["N"], "D": c["tokens_seen"], "C": c["C"], "loss": c["eval_loss"],
                            "run_id": c["run_id"]})
        if "run_id" in t.df:  # only the runs that passed the table's filters
            pts = pts[pts["run_id"].isin(t.df["run_id"])]
    else:
        pts = t.df[["N", "D", "C", "loss"]]
    pts = pts[np.isfinite(pts["loss"]) & (pts["C"] > 0)]
    edges = np.linspace(np.log10(pts["C"].min()), np.log10(pts["C"].max()), n_bins + 1)
    idx = np.clip(np.digitize(np.log10(pts["C"]), edges) - 1, 0, n_bins - 1)
    rows = [g.loc[g["loss"].idxmin()] for _, g in pts.groupby(idx)]
    front = pd.DataFrame(rows).sort_values("C").reset_index(drop=True)
    # Keep only points that improve on every cheaper point: the frontier is monotone.
    return front[front["loss"] < front["loss"].cummin().shift(fill_value=np.inf)].reset_index(drop=True)


def approach1(t: Table, n_boot: int = 1000, seed: int = 0) -> tuple[Fit, pd.DataFrame]:
    front = frontier(t)
    if len(front) < 4 or front["N"].nunique() < 2:
        raise ValueError(f"the compute frontier has {len(front)} point(s) and {front['N'].nunique()} model size(s); "
                         f"fitting N_opt and D_opt with intervals needs at least 4 points and 2 sizes")
    C, N, D = (front[k].to_numpy(float) for k in ("C", "N", "D"))

    def solve(idx):
        a, lkn = np.polyfit(np.log(C[idx]), np.log(N[idx]), 1)
        b, lkd = np.polyfit(np.log(C[idx]), np.log(D[idx]), 1)
        return a, np.exp(lkn), b, np.exp(lkd)

    point = solve(np.arange(len(C)))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(C), len(C))
        if len(np.unique(C[idx])) >= 2 and len(np.unique(N[idx])) >= 2:
            boots.append(solve(idx))
    boots = np.array(boots).reshape(-1, 4)
    names = ["a", "k_N", "b", "k_D"]
    params = summarise(dict(zip(names, point)), {n: boots[:, i] for i, n in enumerate(names)})
    warnings = [] if front["N"].nunique() >= 3 else ["the frontier visits fewer than 3 model sizes"]
    return Fit(form="frontier", formula="N_opt = k_N C^a, D_opt = k_D C^b (lowest loss per compute)",
               params=params, n_points=len(front), warnings=warnings, predict=lambda C_: point[1] * np.asarray(C_, float) ** point[0],
               samples={n: boots[:, i] for i, n in enumerate(names)}), front
