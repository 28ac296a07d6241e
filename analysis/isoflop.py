"""Compute-optimal scaling from the data directly (Hoffmann et al. 2022, Approaches 1 and 2).

Approach 1 -- the compute frontier: for log-spaced compute values, the lowest loss reached by any run (along
its learning curve when curves are available, else its final point); N_opt(C) ~ C^a and D_opt(C) ~ C^b are
power laws fitted (least squares in log-log) to the N and D of the frontier points.

Approach 2 -- IsoFLOP profiles: runs grouped by compute budget (a label column groups them, else C clustered
within 10%; either way a budget's C is the geometric mean of its runs' measured C); the minimum of each
profile gives N_opt(C), and D_opt = C / (6 N_opt). Budgets whose minimum sits at the edge of the sampled N (the
profile is not bracketed) are dropped and reported. Two variants:

* "akima", Porian et al. (2024) as published (formll/resolving-scaling-law-discrepancies, analysis.py): log loss
  Akima-interpolated in log N on 25 points per gap between sampled sizes; a noise bootstrap per budget (1,000
  copies of the losses, each loss plus Normal noise of sd 0.002 up to loss e^3, rising log-linearly to 0.05 at
  e^7: their RefinedWeb setting; when the table has seed replicates, their measured relative sd times the
  loss); a budget is dropped when its minimum, or that of over half the noised copies, falls at the edge; the
  observation is the median noised minimum, its sd the sd of the noised log minima (at least 0.33 sampled gaps
  in log N) divided by the share of copies with a minimum inside; a = the slope of log N_opt on log C by least
  squares weighted 1 / sd^2; its interval from refits on the i-th noised minimum of every budget.
* "parabola": a parabola in log N per budget; unweighted log-log fit; the bootstrap resamples runs within each
  budget.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator

from analysis.fit import Fit, summarise
from analysis.table import Table

BUDGET_TOLERANCE = float(np.log10(1.1))  # runs within 10% of a budget's smallest C share it (Porian et al.'s tolerance)


def budgets(df: pd.DataFrame, tolerance: float = BUDGET_TOLERANCE) -> pd.Series:
    """Each row's budget as compute: the geometric mean of the measured C of the runs that share its label (the
    'budget' column, which may hold numbers or names), or without labels of the runs whose C clusters within
    `tolerance` in log10."""
    logc = np.log10(df["C"].to_numpy(float))
    if "budget" in df and df["budget"].notna().all():
        groups = df.groupby("budget", sort=False).indices.values()
    else:
        order, groups, start = np.argsort(logc), [], 0
        for i in range(1, len(order) + 1):  # a budget spans at most `tolerance` from its smallest run
            if i == len(order) or logc[order[i]] - logc[order[start]] > tolerance:
                groups.append(order[start:i])
                start = i
    labels = np.empty(len(df))
    for group in groups:
        labels[group] = 10 ** np.mean(logc[group])
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


def _fit_exponents(C: np.ndarray, n_opt: np.ndarray, sd: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """log N_opt = a log C + log k_N, weighted 1 / sd^2 when the sd of each log N_opt is given;
    D_opt = C / (6 N_opt). Returns a, k_N, b, k_D."""
    w = None if sd is None else 1 / sd  # polyfit weights multiply the residuals
    a, log_kn = np.polyfit(np.log(C), np.log(n_opt), 1, w=w)
    d_opt = C / (6 * n_opt)
    b, log_kd = np.polyfit(np.log(C), np.log(d_opt), 1, w=w)
    return a, np.exp(log_kn), b, np.exp(log_kd)


# Porian et al. (2024): the noise added to each loss in the noise bootstrap (their RefinedWeb setting).
NOISE_SD = (0.002, 0.05)  # below log loss 3 and above log loss 7, log-linear between
NOISE_LOG_LOSS = (3.0, 7.0)
# Their setting per dataset (configs.py of formll/resolving-scaling-law-discrepancies: RW_SEED_CONFIG and
# OWT2_SEED_CONFIG). For losses below e^3, as all of theirs are, the noise is the low end: 0.002 on RefinedWeb and
# 0.01 on OpenWebText2. A table whose `dataset` column names one of these gets its noise (analysis.table).
DATASET_NOISE = {"rw": 0.002, "refinedweb": 0.002, "owt2": 0.01, "openwebtext2": 0.01}
INTERP_PER_GAP = 25  # interpolation points per gap between sampled sizes
MIN_SD_GAPS = 0.33  # the sd of a budget's log N_opt is at least this many sampled gaps


def dataset_noise(df: pd.DataFrame) -> float | None:
    """Porian et al.'s noise for the table's dataset (one value of a `dataset` column in DATASET_NOISE), or None."""
    if "dataset" not in df:
        return None
    names = {str(v).strip().lower() for v in df["dataset"].dropna().unique()}
    return DATASET_NOISE.get(names.pop()) if len(names) == 1 else None


def porian_noise(loss: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(np.log(loss), NOISE_LOG_LOSS, np.log(NOISE_SD)))


def _porian_budget(n: np.ndarray, loss: np.ndarray, n_boot: int, rng: np.random.Generator, rel_noise=None,
                   abs_noise=None):
    """One budget by Porian et al.'s procedure: (log N_opt, its sd, the noised log minima), or None when the
    minimum is at the edge in more than half of the noised copies."""
    logn, inverse = np.unique(np.log(n), return_inverse=True)
    best = np.full(len(logn), np.inf)
    np.minimum.at(best, inverse, loss)  # the best run per size (e.g. over learning rates)
    if len(logn) < 3:
        return None
    grid = np.linspace(logn[0], logn[-1], (len(logn) - 1) * INTERP_PER_GAP)
    if np.argmin(Akima1DInterpolator(logn, np.log(best))(grid)) in (0, len(grid) - 1):
        return None
    noise = rel_noise * best if rel_noise else np.full(len(best), abs_noise) if abs_noise else porian_noise(best)
    noised = best[:, None] + noise[:, None] * rng.standard_normal((len(best), n_boot))
    curves = Akima1DInterpolator(logn, np.log(np.maximum(noised, 1e-12)), axis=0)(grid)
    idx = np.argmin(curves, axis=0)
    inside = (idx > 0) & (idx < len(grid) - 1)
    if inside.sum() < n_boot / 2:
        return None
    stars = grid[idx[inside]]
    sd = max(np.std(stars), MIN_SD_GAPS * INTERP_PER_GAP * (grid[1] - grid[0])) * n_boot / inside.sum()
    return float(np.median(stars)), float(sd), stars


def _approach2_porian(groups: dict, n_points: int, n_boot: int, seed: int, rel_noise=None,
                      abs_noise=None) -> tuple[Fit, pd.DataFrame]:
    n_boot = max(n_boot, 100)  # the noised copies are part of the estimate, not only of its interval
    rng = np.random.default_rng(seed)
    per = {b: _porian_budget(g["N"].to_numpy(float), g["loss"].to_numpy(float), n_boot, rng, rel_noise, abs_noise)
           for b, g in groups.items()}
    kept = {b: r for b, r in sorted(per.items()) if r is not None}
    if len(kept) < 2:
        raise ValueError(f"IsoFLOP: only {len(kept)} budget(s) have a bracketed minimum; sample N more widely")
    C = np.array(list(kept))
    logn = np.array([r[0] for r in kept.values()])
    sd = np.array([r[1] for r in kept.values()])
    a, kn, b, kd = _fit_exponents(C, np.exp(logn), sd)
    draws = min(len(r[2]) for r in kept.values())
    boots = np.array([_fit_exponents(C, np.exp([r[2][i] for r in kept.values()]), sd) for i in range(draws)])
    names = ["a", "k_N", "b", "k_D"]
    params = summarise(dict(zip(names, (a, kn, b, kd))), {n: boots[:, i] for i, n in enumerate(names)})
    warnings = [f"budget {c:.3g}: minimum at the edge of the sampled N (or in over half the noised copies); dropped"
                for c in sorted(set(per) - set(kept))]
    if len(kept) < 3:
        warnings.append(f"only {len(kept)} budgets with a bracketed minimum: exponents rest on few points")
    table = pd.DataFrame({"C": C, "N_opt": np.exp(logn), "D_opt": C / (6 * np.exp(logn)), "log_N_opt_sd": sd})
    fit = Fit(form="isoflop_akima", formula="N_opt = k_N C^a, D_opt = k_D C^b (IsoFLOP minima, Porian et al.)",
              params=params, n_points=n_points, warnings=warnings, predict=lambda C_: kn * np.asarray(C_, float) ** a,
              samples={n: boots[:, i] for i, n in enumerate(names)})
    return fit, table


def approach2(t: Table, how: str = "parabola", n_boot: int = 1000, seed: int = 0,
              rel_noise: float | None = None, abs_noise: float | None = None) -> tuple[Fit, pd.DataFrame]:
    """IsoFLOP minima and the power laws through them. The "akima" variant's noise, in this order: rel_noise (the
    measured seed-to-seed sd of log loss, as a fraction of each loss), abs_noise (an sd in loss units: --noise, or
    the table's dataset in DATASET_NOISE), else Porian et al.'s RefinedWeb scale."""
    df = t.df.copy()
    df["budget"] = budgets(df)
    groups = {b: g for b, g in df.groupby("budget") if g["N"].nunique() >= 3}
    if len(groups) < 2:
        raise ValueError("IsoFLOP analysis needs at least 2 compute budgets with 3 or more sizes each")
    if how == "akima":
        return _approach2_porian(groups, len(df), n_boot, seed, rel_noise, abs_noise)

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
