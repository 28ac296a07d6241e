"""Sums of power laws fitted in log space with a Huber loss (Hoffmann et al. 2022, Approach 3).

A law with k power terms and an optional constant,

    L = exp(a_1) X_1^-alpha_1 + ... + exp(a_k) X_k^-alpha_k [+ exp(e)],

is fitted by minimising  sum_i Huber_delta( LSE(a_1 - alpha_1 log X_1i, ..., [e]) - log L_i )  -- a sum over points,
not a mean -- with L-BFGS-B. Parameters are ordered theta = (a_1..a_k, alpha_1..alpha_k[, e]).

Two ways to the same optimum:
* method="full": L-BFGS-B from every start of the grid (the published procedure; slow for large grids).
* method="fast": the objective at every grid start in one vectorised pass, then L-BFGS-B from the best few.
Both pick the lowest objective reached. The bootstrap reuses the per-point Huber matrix of the grid: a resample
is a vector of counts w, so the grid objective of all resamples is one matrix product.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import warnings

import numpy as np
from scipy.optimize import minimize

DELTA = 1e-3
LBFGS_OPTIONS = {"maxiter": 10_000, "ftol": 1e-14, "gtol": 1e-10}


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _terms(theta: np.ndarray, logx: np.ndarray, k: int, constant: bool) -> np.ndarray:
    t = theta[:k] - theta[k:2 * k] * logx  # (n, k)
    if constant:
        t = np.concatenate([t, np.full((len(logx), 1), theta[2 * k])], axis=1)
    return t


def predict_log(theta, logx, k: int, constant: bool) -> np.ndarray:
    t = _terms(np.asarray(theta, float), logx, k, constant)
    m = t.max(1, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(1, keepdims=True)))[:, 0]


def objective(theta, logx, y, w, k: int, constant: bool, delta: float):
    """Weighted Huber objective and its gradient, on 1-D arrays and elementwise numpy only (no BLAS calls, which
    would contend for cores when bootstrap workers run in parallel)."""
    terms = [theta[j] - theta[k + j] * logx[:, j] for j in range(k)]
    if constant:
        terms.append(np.full(len(y), theta[2 * k]))
    m = terms[0]
    for t in terms[1:]:
        m = np.maximum(m, t)
    ex = [np.exp(t - m) for t in terms]
    s = sum(ex)
    r = m + np.log(s) - y
    a = np.abs(r)
    inner = a <= delta
    q = w * np.where(inner, r, np.copysign(delta, r)) / s  # weighted Huber derivative / sum of exp
    g = [(q * e).sum() for e in ex]
    g_alpha = [-(q * ex[j] * logx[:, j]).sum() for j in range(k)]
    value = (w * np.where(inner, 0.5 * r * r, delta * (a - 0.5 * delta))).sum()
    return float(value), np.array(g[:k] + g_alpha + g[k:])


def grid(a_values, alpha_values, e_values, k: int, constant: bool) -> np.ndarray:
    """All combinations of start values, in theta order."""
    axes = [a_values] * k + [alpha_values] * k + ([e_values] if constant else [])
    return np.array(list(itertools.product(*axes)), dtype=float)


def grid_huber(starts: np.ndarray, logx, y, k: int, constant: bool, delta: float) -> np.ndarray:
    """Per-point Huber loss at every start: (n_starts, n_points)."""
    out = np.empty((len(starts), len(y)))
    for lo in range(0, len(starts), 512):
        th = starts[lo:lo + 512]
        t = th[:, None, :k] - th[:, None, k:2 * k] * logx[None]  # (g, n, k)
        if constant:
            t = np.concatenate([t, np.broadcast_to(th[:, None, 2 * k:], (len(th), len(y), 1))], axis=2)
        m = t.max(2, keepdims=True)
        lse = (m + np.log(np.exp(t - m).sum(2, keepdims=True)))[..., 0]
        out[lo:lo + 512] = huber(lse - y, delta)
    return out


def _lbfgs(start, logx, y, w, k, constant, delta):
    """One L-BFGS-B run. log X is centred first (a_j -> a_j - alpha_j * mean log X_j): an exact linear change of
    variables that removes most of the a-alpha correlation, so the optimiser converges in far fewer steps."""
    centre = logx.mean(0)
    start = np.asarray(start, float).copy()
    start[:k] -= start[k:2 * k] * centre
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in far-off starts is harmless here
        res = minimize(objective, start, args=(logx - centre, y, w, k, constant, delta), jac=True,
                       method="L-BFGS-B", options=LBFGS_OPTIONS)
    theta = res.x.copy()
    theta[:k] += theta[k:2 * k] * centre
    return theta, float(res.fun) if np.isfinite(res.fun) else np.inf


def fit(logx, y, starts, k: int, constant: bool, delta: float = DELTA, w=None, method: str = "fast",
        refine: int = 10, extra_starts=()):
    """Minimise the Huber objective; return (theta, objective value)."""
    logx = np.asarray(logx, float).reshape(len(y), k)
    y = np.asarray(y, float)
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    if method == "full":
        candidates = list(starts)
    elif method == "fast":
        values = (grid_huber(starts, logx, y, k, constant, delta) * w).sum(1)
        candidates = list(starts[np.argsort(values)[:refine]])
    else:
        raise ValueError(f"method must be 'fast' or 'full', got {method!r}")
    return _refit(logx, y, w, [*extra_starts, *candidates], k, constant, delta)


def resample_counts(n: int, n_boot: int, rng: np.random.Generator, groups=None) -> np.ndarray:
    """Bootstrap resamples as count vectors (n_boot, n). With groups, whole groups are resampled (e.g. all
    points of one run's learning curve), so correlated points stay together."""
    if groups is None:
        idx = rng.integers(0, n, (n_boot, n))
        return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)
    codes, inverse = np.unique(np.asarray(groups), return_inverse=True)
    picks = rng.integers(0, len(codes), (n_boot, len(codes)))
    group_counts = np.stack([np.bincount(row, minlength=len(codes)) for row in picks]).astype(float)
    return group_counts[:, inverse]


def bootstrap(logx, y, starts, theta_hat, k: int, constant: bool, n_boot: int = 1000, seed: int = 0,
              delta: float = DELTA, groups=None, workers: int | None = None) -> np.ndarray:
    """Refit on n_boot resamples; each starts from the full-data optimum and from the resample's best grid
    start. Returns (n_boot, n_params). Resamples are spread over `workers` processes (default: all cores)."""
    logx = np.asarray(logx, float).reshape(len(y), k)
    y = np.asarray(y, float)
    rng = np.random.default_rng(seed)
    counts = resample_counts(len(y), n_boot, rng, groups)
    best_start = np.argmin(grid_huber(starts, logx, y, k, constant, delta) @ counts.T, axis=0)
    jobs = [(logx, y, counts[b], [theta_hat, starts[best_start[b]]], k, constant, delta) for b in range(n_boot)]
    workers = workers or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if workers > 1 and n_boot >= 50:
        # L-BFGS-B calls BLAS; a multi-threaded BLAS in every worker thrashes the cores (measured: 4x to 16x
        # slower on 2 cores), so each worker first drops to one BLAS thread.
        with multiprocessing.get_context("fork").Pool(workers, initializer=one_blas_thread) as pool:
            return np.array(pool.map(_refit_resample, jobs, chunksize=max(1, n_boot // (8 * workers))))
    return np.array([_refit_resample(j) for j in jobs])


def one_blas_thread() -> None:
    """Set every loaded OpenBLAS (numpy's and scipy's bundled copies) to one thread, through its C API."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:  # not Linux: leave the BLAS as it is
        return
    names = ("openblas_set_num_threads", "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
             "openblas_set_num_threads64_")
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(1)


def _refit_resample(job):
    logx, y, w, starts, k, constant, delta = job
    keep = w > 0  # zero-weight points do not enter the objective
    return _refit(logx[keep], y[keep], w[keep], starts, k, constant, delta)[0]


def _refit(logx, y, w, starts, k, constant, delta):
    best = (None, np.inf)
    for start in starts:
        theta, value = _lbfgs(np.asarray(start, float), logx, y, w, k, constant, delta)
        if value < best[1]:
            best = (theta, value)
    return best


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
