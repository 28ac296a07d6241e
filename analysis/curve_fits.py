"""The curve forms of the emergence detector (analysis.emergence), fitted by least squares on normalised scores
u against x = log10(scale): a line and a power law with offset (smooth), a sigmoid, a one-break broken power law
(Caballero et al. 2022), and BIC = n log(SSE / n) + k log n to compare them (SSE floored at n (1e-3)^2).

Where a form is linear once its nonlinear parameters are fixed, those are profiled over a grid for every
bootstrap weight vector at once (`profile`), which keeps a 400-resample bootstrap to a few matrix products.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import least_squares

SSE_FLOOR = 1e-3  # per point, normalised units


def sigmoid(theta, x):
    lo, hi, m, logw = theta
    with np.errstate(all="ignore"):
        return lo + (hi - lo) / (1 + np.exp(-np.clip((x - m) / np.exp(np.clip(logw, -30, 30)), -60, 60)))


def profile(basis: np.ndarray, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of u ~ c0 + c1 * basis for every basis row (G, n) and every weight row (B, n) at
    once: the model is linear in (c0, c1) once the nonlinear parameters fix the basis. Returns sse, c0, c1 (B, G)."""
    sw, su, suu = w.sum(1)[:, None], (w @ u)[:, None], (w @ (u * u))[:, None]
    ss, sss, ssu = w @ basis.T, w @ (basis * basis).T, (w * u) @ basis.T
    var_s = sss - ss * ss / sw
    cov = ssu - ss * su / sw
    c1 = np.where(var_s > 1e-12, cov / np.where(var_s > 1e-12, var_s, 1), 0.0)
    c0 = (su - c1 * ss) / sw
    sse = suu - su * su / sw - c1 * cov
    return np.maximum(sse, 0.0), c0, c1


def sigmoid_grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, log w) pairs and the logistic basis for each: midpoints across and beyond the data, widths from a
    thousandth of the span to twice the span."""
    span = max(float(x.max() - x.min()), 1e-6)
    ms = np.linspace(x.min() - 0.25 * span, x.max() + 0.25 * span, 151)
    logws = np.log(np.geomspace(span * 1e-3, span * 2, 41))
    mm, ll = np.meshgrid(ms, logws, indexing="ij")
    mm, ll = mm.ravel(), ll.ravel()
    basis = 1 / (1 + np.exp(-np.clip((x[None, :] - mm[:, None]) / np.exp(ll)[:, None], -60, 60)))
    return np.stack([mm, ll], 1), basis


def _power_grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponents (per decade) and the basis 10^(-a (x - x_min)) for a power law with offset, c0 + c1 X^-a."""
    a = np.concatenate([-np.geomspace(3, 0.01, 40), np.geomspace(0.01, 3, 40)])
    return a, 10.0 ** (-a[:, None] * (x[None, :] - x.min()))


def fit_sigmoid(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float]:
    """Profile the (m, w) grid, then refine all four parameters by least squares; returns (theta, sse)."""
    grid, basis = sigmoid_grid(x)
    sse, c0, c1 = profile(basis, u, np.ones((1, len(u))))
    i = int(np.argmin(sse[0]))
    start = np.array([c0[0, i], c0[0, i] + c1[0, i], *grid[i]])
    r = least_squares(lambda t: sigmoid(t, x) - u, start, method="lm", max_nfev=400)
    refined = float(np.sum(r.fun ** 2))
    return (r.x, refined) if np.all(np.isfinite(r.x)) and refined < sse[0, i] else (start, float(sse[0, i]))


def fit_smooth(x: np.ndarray, u: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BIC-relevant SSEs of the smooth forms for each weight row: a line in x (k=2) and a power law with offset
    (k=3). Returns (sse_linear (B,), sse_power (B,))."""
    w = np.ones((1, len(u))) if w is None else w
    sse_lin, _, _ = profile(x[None, :], u, w)
    _, basis = _power_grid(x)
    sse_pow, _, _ = profile(basis, u, w)
    return sse_lin[:, 0], sse_pow.min(1)


def smooth_curve(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The fitted values of the better (by BIC) smooth form: the null model of analysis.emergence's test."""
    n, ones = len(u), np.ones((1, len(u)))
    sse_lin, c0, c1 = profile(x[None, :], u, ones)
    _, basis = _power_grid(x)
    sse_pow, p0, p1 = profile(basis, u, ones)
    j = int(np.argmin(sse_pow[0]))
    if bic(float(sse_lin[0, 0]), n, 2) <= bic(float(sse_pow[0, j]), n, 3):
        return c0[0, 0] + c1[0, 0] * x
    return p0[0, j] + p1[0, j] * basis[j]


def grid_delta_bic(x: np.ndarray, u: np.ndarray, grid_basis: np.ndarray) -> float:
    """BIC of the smooth forms minus that of the best sigmoid on the grid (no refinement): the test statistic."""
    n = len(u)
    sse, _, _ = profile(grid_basis, u, np.ones((1, n)))
    sse_lin, sse_pow = fit_smooth(x, u)
    return float(smooth_bic(sse_lin, sse_pow, n)[0]) - bic(float(sse[0].min()), n, 4)


def smooth_bic(sse_lin, sse_pow, n: int):
    return np.minimum(np.vectorize(bic)(sse_lin, n, 2), np.vectorize(bic)(sse_pow, n, 3))


def _bnsl(theta, X):
    a, logb, c0, c1, logd, logf = theta
    f = np.exp(logf)
    return a + np.exp(logb - c0 * np.log(X)) * np.exp(-c1 * f * np.log1p((X / np.exp(logd)) ** (1 / f)))


def _bnsl_jacobian(theta, X):
    """d _bnsl / d theta, analytically (a finite-difference Jacobian made the fit most of an emergence analysis's
    time). With g = b X^-c0 (1 + r)^(-c1 f), r = (X / d)^(1 / f), z = ln r: d/da = 1, d/dlogb = g,
    d/dc0 = -ln X g, d/dc1 = -f ln(1 + r) g, d/dlogd = c1 r / (1 + r) g, d/dlogf = -c1 f (ln(1 + r) - z r / (1 + r)) g;
    ln(1 + r) and r / (1 + r) in their overflow-free forms."""
    _, logb, c0, c1, logd, logf = theta
    f, lnx = np.exp(logf), np.log(X)
    z = (lnx - logd) / f
    soft, share = np.logaddexp(0.0, z), 0.5 * (1 + np.tanh(z / 2))  # ln(1 + e^z), e^z / (1 + e^z)
    g = np.exp(logb - c0 * lnx - c1 * f * soft)
    return np.stack([np.ones_like(X), g, -lnx * g, -f * soft * g, c1 * share * g,
                     -c1 * f * (soft - z * share) * g], axis=1)


def fit_bnsl(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float] | None:
    """One-break broken power law on the error 1 - u, X = 10^x. Needs 8 points or more."""
    if len(np.unique(x)) < 8:
        return None
    X = 10.0 ** (x - x.min())  # rescaled for conditioning; the break is shifted back below
    err = 1 - u
    best, best_sse = None, math.inf
    for logd in np.log(np.quantile(X, [0.2, 0.4, 0.6, 0.8])):
        for logf in (math.log(0.05), math.log(0.5)):
            start = [max(err.min(), 0) * 0.9, math.log(max(err.max(), 1e-3)), 0.05, 1.0, logd, logf]
            try:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    r = least_squares(lambda t: np.nan_to_num(_bnsl(t, X) - err, nan=1e6, posinf=1e6, neginf=-1e6),
                                      start, max_nfev=2000, ftol=1e-6, xtol=1e-6,
                                      jac=lambda t: np.nan_to_num(_bnsl_jacobian(t, X), posinf=1e12, neginf=-1e12),
                                      bounds=([-1, -20, -1, -1, math.log(X.min()) - 2, math.log(1e-3)],
                                              [2, 20, 5, 50, math.log(X.max()) + 2, math.log(10)]))
            except ValueError:  # a start the optimiser cannot leave; the other starts remain
                continue
            sse = float(np.sum(r.fun ** 2))
            if np.isfinite(sse) and sse < best_sse:
                best, best_sse = r.x.copy(), sse
    if best is None:
        return None
    best[4] += x.min() * math.log(10)
    return best, best_sse


def bic(sse: float, n: int, k: int) -> float:
    return n * math.log(max(sse, n * SSE_FLOOR ** 2) / n) + k * math.log(n)


def breakthroughness(x: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(x, kind="stable")
    ys = y[order]
    if len(ys) < 3:
        return math.nan
    i_y = math.copysign(ys.max() - ys.min(), int(np.argmax(ys)) - int(np.argmin(ys)))
    rms = math.sqrt(float(np.median(np.diff(ys) ** 2)))
    return i_y / rms if rms > 0 else math.inf
