"""The fitted forms, each with its parameters, 95% bootstrap intervals and derived quantities.

* chinchilla(t):   L(N, D) = E + A / N^alpha + B / D^beta  (Hoffmann et al. 2022 Approach 3, as replicated by
                   Besiroglu et al. 2024): Huber delta 1e-3 on log L, summed; L-BFGS-B from the grid
                   alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4,500 starts).
                   Derived: a = beta / (alpha + beta), b = alpha / (alpha + beta), N_opt(C), D_opt(C), L_opt(C)
                   under C = 6 N D.
* single(t, x):    L(X) = E + A X^-alpha for X in N, D, C or steps (same objective, grid over a, alpha, e).
* power(t, x):     L(X) = A X^-alpha (least squares in log space).
* kaplan_nd(t):    L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D  (Kaplan et al. 2020, eq. 1.5).
* kaplan_ns(t):    L(N, S) = (N_c / N)^alpha_N + (S_c / S)^alpha_S  (Kaplan et al. eq. 1.6, S = steps).

The data-constrained laws (Muennighoff et al. 2023) live in analysis.data_constrained.

Every fit returns an analysis.fit.Fit: params {name: (value, ci_low, ci_high)}, the bootstrap samples, and
warnings.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from analysis import lse
from analysis.fit import Fit, correlations, identifiability, range_warning, summarise
from analysis.table import Table

A_GRID = np.arange(0, 26, 5.0)
ALPHA_GRID = np.arange(0, 2.01, 0.5)
E_GRID = np.arange(-1, 1.01, 0.5)
N_BOOT = 1000


def chinchilla_loss(p: dict, N, D):
    """L(N, D) = E + A / N^alpha + B / D^beta for parameters p: point values, or bootstrap arrays (broadcast).
    With log_A and log_B in p (a fit's bootstrap samples carry them) the terms are taken in log space, so a
    resample whose exponent ran off, and whose A or B overflowed, still gives the finite term the data saw."""
    N, D = np.asarray(N, float), np.asarray(D, float)
    with np.errstate(all="ignore"):  # a resample may run a coefficient off to infinity
        if "log_A" in p and "log_B" in p:
            return p["E"] + np.exp(p["log_A"] - p["alpha"] * np.log(N)) + np.exp(p["log_B"] - p["beta"] * np.log(D))
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def predicted_interval(fit: Fit, N: float, D: float, rel_sd: float = 0.0, seed: int = 0) -> tuple[float, float]:
    """95% interval of a Chinchilla fit's predicted loss at (N, D) over its bootstrap resamples; NaN without
    resamples. rel_sd = 0: the parameters' uncertainty only. rel_sd > 0: a predictive interval for one new run,
    each resample's prediction times exp(Normal(0, rel_sd)) (run-to-run noise in log loss)."""
    if not fit.samples:
        return float("nan"), float("nan")
    return noisy_interval(chinchilla_loss(fit.samples, N, D), rel_sd, seed)


NOISE_DRAWS = 20  # noise draws per bootstrap resample: smooth interval ends from a few hundred resamples


def noisy_interval(samples, rel_sd: float, seed: int = 0) -> tuple[float, float]:
    """95% interval of bootstrap samples of a predicted loss, each times NOISE_DRAWS draws of
    exp(Normal(0, rel_sd)) (one new run); rel_sd = 0: the samples' own interval; rel_sd = inf: unbounded."""
    samples = np.asarray(samples, float).reshape(-1, 1)
    if not rel_sd:
        return lse.interval(samples)
    if not np.isfinite(rel_sd):  # the law's own backtests ran away: any loss is possible
        return 0.0, float("inf")
    z = np.random.default_rng(seed).standard_normal((len(samples), NOISE_DRAWS))
    with np.errstate(all="ignore"):
        return lse.interval(samples * np.exp(rel_sd * z))


def _fit_and_bootstrap(objective, starts, n: int, n_boot: int, seed: int, bounds=None):
    """Multi-start L-BFGS-B on objective(theta, w) for forms outside analysis.lse's family; then a refit on each of
    n_boot resamples of the n points (as count weights), started from the full-data optimum.
    Returns (the best scipy result, bootstrap thetas or None)."""
    def solve(w, from_):
        results = [minimize(objective, s, args=(w,), method="L-BFGS-B", bounds=bounds, options=lse.LBFGS_OPTIONS)
                   for s in from_]
        return min(results, key=lambda r: r.fun)

    best = solve(np.ones(n), starts)
    if not n_boot:
        return best, None
    counts = lse.resample_counts(n, n_boot, np.random.default_rng(seed))
    return best, np.array([solve(w, [best.x]).x for w in counts])


# ---------------------------------------------------------------- Chinchilla Approach 3
def chinchilla(t: Table, n_boot: int = N_BOOT, seed: int = 0, method: str = "fast", groups=None) -> Fit:
    df = t.df
    logx = np.log(df[["N", "D"]].to_numpy(float))
    y = np.log(df["loss"].to_numpy(float))
    starts = lse.grid(A_GRID, ALPHA_GRID, E_GRID, 2, True)
    theta, value = lse.fit(logx, y, starts, 2, True, method=method)
    boot = lse.bootstrap(logx, y, starts, theta, 2, True, n_boot, seed, groups=groups) if n_boot else None
    names = ["E", "A", "alpha", "B", "beta"]

    def natural(th):
        th = np.atleast_2d(th)
        with np.errstate(over="ignore"):  # a resample may run a coefficient off to infinity: kept as inf
            return {"E": np.exp(th[:, 4]), "A": np.exp(th[:, 0]), "alpha": th[:, 2], "B": np.exp(th[:, 1]),
                    "beta": th[:, 3]}

    point = {k: v[0] for k, v in natural(theta).items()}
    samples = natural(boot) if boot is not None else {}
    point.update(_derived(point))
    logs = {"log_A": float(theta[0]), "log_B": float(theta[1])}
    if samples:
        samples.update(_derived(samples))
        # the log coefficients: not summarised as parameters; chinchilla_loss uses them (see there)
        samples.update({"log_A": boot[:, 0], "log_B": boot[:, 1]})
    params = summarise(point, samples)
    warnings = range_warning(df["N"].to_numpy(), "N") + range_warning(df["D"].to_numpy(), "D")
    warnings += identifiability(params, ["E", "A", "B"])
    for k in ("alpha", "beta"):
        if point[k] <= 0:
            warnings.append(f"{k} = {point[k]:.3g} is not positive: loss does not fall with "
                            f"{'N' if k == 'alpha' else 'D'} in this data")

    return Fit(form="chinchilla", formula="L = E + A / N^alpha + B / D^beta", params=params, n_points=len(df),
               objective=value, warnings=warnings, correlations=correlations(samples, names) if samples else None,
               predict=lambda N, D: chinchilla_loss({**point, **logs}, N, D), samples=samples, log_coefficients=logs)


def _derived(p: dict) -> dict:
    """Compute-optimal allocation under C = 6 N D (Hoffmann et al. eq. 4)."""
    alpha, beta = np.asarray(p["alpha"], float), np.asarray(p["beta"], float)
    with np.errstate(all="ignore"):
        G = (alpha * p["A"] / (beta * p["B"])) ** (1 / (alpha + beta))
        return {"a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": G}


def optimal(fit: Fit, flops, samples: bool = False):
    """N_opt, D_opt, tokens per parameter and predicted loss at compute C (= 6 N D) from a Chinchilla fit."""
    src = fit.samples if samples else {k: v["value"] for k, v in fit.params.items()}
    C = np.asarray(flops, float)
    with np.errstate(all="ignore"):
        n = src["G"] * (C / 6) ** src["a"]
        d = (C / 6) ** src["b"] / src["G"]
    return {"N_opt": n, "D_opt": d, "tokens_per_param": d / n, "loss": chinchilla_loss(src, n, d)}


# ---------------------------------------------------------------- one variable
def single(t: Table, x: str, n_boot: int = N_BOOT, seed: int = 0, groups=None) -> Fit:
    df = t.df[np.isfinite(t.df[x]) & (t.df[x] > 0)] if x in t.df else None
    if df is None or len(df) < 4:
        raise ValueError(f"need at least 4 rows with positive {x} for L({x})")
    logx = np.log(df[[x]].to_numpy(float))
    y = np.log(df["loss"].to_numpy(float))
    starts = lse.grid(A_GRID, ALPHA_GRID, E_GRID, 1, True)
    theta, value = lse.fit(logx, y, starts, 1, True)
    boot = lse.bootstrap(logx, y, starts, theta, 1, True, n_boot, seed, groups=groups) if n_boot else None

    def natural(th):
        th = np.atleast_2d(th)
        return {"E": np.exp(th[:, 2]), "A": np.exp(th[:, 0]), "alpha": th[:, 1]}

    point = {k: v[0] for k, v in natural(theta).items()}
    samples = natural(boot) if boot is not None else {}
    params = summarise(point, samples)
    warnings = range_warning(df[x].to_numpy(), x) + identifiability(params, ["E", "A"])

    def predict(X):
        return point["E"] + point["A"] * np.asarray(X, float) ** -point["alpha"]

    return Fit(form=f"L({x})", formula=f"L = E + A * {x}^-alpha", params=params, n_points=len(df), objective=value,
               warnings=warnings, correlations=correlations(samples, ["E", "A", "alpha"]) if samples else None,
               predict=predict, samples=samples)


def power(t: Table, x: str, n_boot: int = N_BOOT, seed: int = 0) -> Fit:
    df = t.df
    lx, ly = np.log(df[x].to_numpy(float)), np.log(df["loss"].to_numpy(float))

    def solve(idx):
        slope, intercept = np.polyfit(lx[idx], ly[idx], 1)
        return np.exp(intercept), -slope

    A, alpha = solve(np.arange(len(lx)))
    rng = np.random.default_rng(seed)
    boot = np.array([solve(rng.integers(0, len(lx), len(lx))) for _ in range(n_boot)]) if n_boot else None
    samples = {"A": boot[:, 0], "alpha": boot[:, 1]} if boot is not None else {}
    params = summarise({"A": A, "alpha": alpha}, samples)
    return Fit(form=f"power({x})", formula=f"L = A * {x}^-alpha", params=params, n_points=len(df),
               warnings=range_warning(df[x].to_numpy(), x), predict=lambda X: A * np.asarray(X, float) ** -alpha,
               samples=samples)


# ---------------------------------------------------------------- Kaplan et al.
def kaplan_ns(t: Table, n_boot: int = N_BOOT, seed: int = 0) -> Fit:
    df = t.df[t.df["steps"] > 0] if "steps" in t.df else None
    if df is None or len(df) < 5:
        raise ValueError("L(N, S) needs a steps column with at least 5 rows")
    logx = np.log(df[["N", "steps"]].to_numpy(float))
    y = np.log(df["loss"].to_numpy(float))
    starts = lse.grid(A_GRID, ALPHA_GRID, E_GRID, 2, False)
    theta, value = lse.fit(logx, y, starts, 2, False)
    boot = lse.bootstrap(logx, y, starts, theta, 2, False, n_boot, seed) if n_boot else None

    def natural(th):  # exp(a) N^-alpha = (N_c / N)^alpha  =>  N_c = exp(a / alpha)
        th = np.atleast_2d(th)
        with np.errstate(all="ignore"):
            return {"N_c": np.exp(th[:, 0] / th[:, 2]), "alpha_N": th[:, 2], "S_c": np.exp(th[:, 1] / th[:, 3]),
                    "alpha_S": th[:, 3]}

    point = {k: v[0] for k, v in natural(theta).items()}
    samples = natural(boot) if boot is not None else {}
    params = summarise(point, samples)

    def predict(N, steps):
        return (point["N_c"] / np.asarray(N, float)) ** point["alpha_N"] + \
            (point["S_c"] / np.asarray(steps, float)) ** point["alpha_S"]

    return Fit(form="kaplan_ns", formula="L = (N_c / N)^alpha_N + (S_c / S)^alpha_S", params=params,
               n_points=len(df), objective=value, warnings=identifiability(params, ["N_c", "S_c"]), predict=predict,
               samples=samples)


def _kaplan_nd_objective(theta, lN, lD, y, w, delta=lse.DELTA):
    log_nc, log_dc, alpha_n, alpha_d = theta
    u = (alpha_n / alpha_d) * (log_nc - lN)
    v = log_dc - lD
    with np.errstate(all="ignore"):  # far-off trial points overflow; L-BFGS-B backs off from them
        pred = alpha_d * np.logaddexp(u, v)
    return float((w * lse.huber(pred - y, delta)).sum())


def kaplan_nd(t: Table, n_boot: int = 200, seed: int = 0) -> Fit:
    df = t.df
    lN, lD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    y = np.log(df["loss"].to_numpy(float))
    starts = [(ln, ld, an, ad) for ln in (10, 20, 30) for ld in (10, 20, 30) for an in (0.05, 0.3, 1.0)
              for ad in (0.05, 0.3, 1.0)]

    best, boot = _fit_and_bootstrap(lambda th, w: _kaplan_nd_objective(th, lN, lD, y, w), starts, len(y), n_boot,
                                    seed, bounds=[(None, None), (None, None), (1e-4, 10), (1e-4, 10)])
    names = ["N_c", "D_c", "alpha_N", "alpha_D"]

    def natural(th):
        th = np.atleast_2d(th)
        return {"N_c": np.exp(th[:, 0]), "D_c": np.exp(th[:, 1]), "alpha_N": th[:, 2], "alpha_D": th[:, 3]}

    point = {k: v[0] for k, v in natural(best.x).items()}
    samples = natural(boot) if boot is not None else {}
    params = summarise(point, samples)

    def predict(N, D):
        return ((point["N_c"] / np.asarray(N, float)) ** (point["alpha_N"] / point["alpha_D"]) +
                point["D_c"] / np.asarray(D, float)) ** point["alpha_D"]

    return Fit(form="kaplan_nd", formula="L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D", params=params,
               n_points=len(df), objective=float(best.fun), warnings=identifiability(params, ["N_c", "D_c"]),
               correlations=correlations(samples, names) if samples else None, predict=predict, samples=samples)
