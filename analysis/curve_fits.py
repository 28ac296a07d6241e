"""The curve forms of the emergence detector (analysis.emergence), fitted to normalised scores u against
x = log10(scale): a line and a power law with offset (smooth), a sigmoid, a one-break broken power law (Caballero
et al. 2022, by least squares).

Evaluations of real models have heavy tails: a family whose evaluation failed (a prompt format it does not
follow) scores near zero among models that score 0.3. Least squares lets two such points decide a comparison, so
the constant, smooth and sigmoid forms are fitted under Student-t errors (NU degrees of freedom, scale fitted),
by iteratively reweighted least squares (the EM algorithm for the t, Lange et al. 1989), and compared by that
likelihood's BIC (`robust_bics`): a point far off every curve then costs each form about the same.

Where a form is linear once its nonlinear parameters are fixed, those are profiled over a grid for every
bootstrap weight vector (or simulated series) at once (`profile`), which keeps a 400-resample bootstrap to a few
matrix products per reweighting step.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import least_squares
from scipy.special import gammaln

SCALE_FLOOR = 1e-3  # the t scale's floor, normalised units
NU = 10.0  # degrees of freedom of the robust comparison's Student-t: tails heavy enough for a failed evaluation


def sigmoid(theta, x):
    lo, hi, m, logw = theta
    with np.errstate(all="ignore"):
        return lo + (hi - lo) / (1 + np.exp(-np.clip((x - m) / np.exp(np.clip(logw, -30, 30)), -60, 60)))


def profile(basis: np.ndarray, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of u ~ c0 + c1 * basis for every basis row (G, n) and every weight row (B, n) at
    once (u: one series (n,), or one per weight row (B, n)): the model is linear in (c0, c1) once the nonlinear
    parameters fix the basis. Returns sse, c0, c1 (B, G)."""
    wu = w * u
    sw, su, suu = w.sum(1)[:, None], wu.sum(1)[:, None], (wu * u).sum(1)[:, None]
    ss, sss, ssu = w @ basis.T, w @ (basis * basis).T, wu @ basis.T
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


def fit_sigmoid(x: np.ndarray, u: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Profile the (m, w) grid, then refine all four parameters by (weighted) least squares; returns (theta, sse)."""
    w = np.ones(len(u)) if w is None else w
    grid, basis = sigmoid_grid(x)
    sse, c0, c1 = profile(basis, u, w[None, :])
    i = int(np.argmin(sse[0]))
    start = np.array([c0[0, i], c0[0, i] + c1[0, i], *grid[i]])
    root = np.sqrt(w)
    r = least_squares(lambda t: root * (sigmoid(t, x) - u), start, method="lm", max_nfev=400)
    refined = float(np.sum(r.fun ** 2))
    return (r.x, refined) if np.all(np.isfinite(r.x)) and refined < sse[0, i] else (start, float(sse[0, i]))


def t_fit(basis: np.ndarray, u: np.ndarray, counts: np.ndarray | None = None, iters: int = 100,
          tol: float = 1e-6) -> dict:
    """The best row of u ~ c0 + c1 * basis[row] under Student-t errors (NU, scale sigma) by iteratively reweighted
    least squares, for every row of counts (B, n; resampled rows as multiplicities) or of u (B, n; simulated
    series) at once: weights (NU + 1) / (NU + (r / sigma)^2), sigma^2 = the counts' mean of weight r^2. Returns
    per row the grid row, the fitted values, sigma (floored at SCALE_FLOOR), the negative log-likelihood, and the
    final weights."""
    n = u.shape[-1]
    c = np.ones((len(u) if u.ndim == 2 else 1, n)) if counts is None else counts
    u = np.broadcast_to(u, c.shape)
    w, fitted = np.ones_like(c), np.zeros_like(c)
    row, sigma = np.zeros(len(c), int), np.ones((len(c), 1))
    active = np.arange(len(c))  # the rows still moving: a converged row is not fitted again
    for _ in range(iters):
        sse, c0, c1 = profile(basis, u[active], c[active] * w[active])
        j = np.argmin(sse, 1)
        k = np.arange(len(active))
        fit = c0[k, j][:, None] + c1[k, j][:, None] * basis[j]
        r = u[active] - fit
        sd = np.maximum(np.sqrt(np.sum(c[active] * w[active] * r * r, 1) / c[active].sum(1)), SCALE_FLOOR)[:, None]
        new = (NU + 1) / (NU + (r / sd) ** 2)
        done = np.max(np.abs(new - w[active]), 1) < tol
        w[active], fitted[active], row[active], sigma[active] = new, fit, j, sd
        active = active[~done]
        if not len(active):
            break
    r = u - fitted
    logpdf = gammaln((NU + 1) / 2) - gammaln(NU / 2) - 0.5 * math.log(NU * math.pi) - np.log(sigma) \
        - (NU + 1) / 2 * np.log1p((r / sigma) ** 2 / NU)
    return {"row": row, "fitted": fitted, "sigma": sigma[:, 0], "nll": -np.sum(c * logpdf, 1), "weights": w}


def _t_bic(fit: dict, k: int, n: int):
    """BIC = 2 NLL + (k + 1) log n of a t_fit: k parameters of the form, and the scale."""
    return 2 * fit["nll"] + (k + 1) * math.log(n)


def robust_bics(x: np.ndarray, u: np.ndarray, grid_basis: np.ndarray | None = None,
                counts: np.ndarray | None = None) -> dict:
    """BICs (_t_bic) under Student-t errors of the constant, the line, the power law with offset and the sigmoid
    (on its grid, unrefined), per row of counts or of u (B,); "smooth" is the better of the line and the power
    law. "fits" holds each form's t_fit; for one series (neither counts nor rows of u), plain numbers and that
    series' fits."""
    n = u.shape[-1]
    basis = sigmoid_grid(x)[1] if grid_basis is None else grid_basis
    batch = counts is not None or u.ndim == 2
    # resamples: weights to 1e-3 (on Ruan et al.'s table, the same verdicts and thresholds as 1e-4, in under
    # half the time)
    tol = 1e-3 if batch else 1e-6
    forms = {"constant": (np.zeros((1, n)), 1), "linear": (x[None, :], 2), "power": (_power_grid(x)[1], 3),
             "sigmoid": (basis, 4)}
    fits = {name: t_fit(b, u, counts, tol=tol) for name, (b, _) in forms.items()}
    out = {name: _t_bic(fits[name], k, n) for name, (_, k) in forms.items()}
    if not batch:
        out = {name: float(v[0]) for name, v in out.items()}
        fits = {name: {key: v[0] for key, v in f.items()} for name, f in fits.items()}
    out["smooth"] = np.minimum(out["linear"], out["power"])
    out["fits"] = fits
    return out


def smooth_null(rb: dict) -> tuple[np.ndarray, float]:
    """The null model of analysis.emergence's test, from one series' robust_bics: the fitted values of the better
    smooth form under Student-t errors, and its scale sigma."""
    best = rb["fits"]["linear" if rb["linear"] <= rb["power"] else "power"]
    return best["fitted"], float(best["sigma"])


def grid_delta_bic(x: np.ndarray, u: np.ndarray, grid_basis: np.ndarray):
    """Robust BIC (robust_bics) of the smooth forms minus that of the best sigmoid on the grid: the test statistic,
    for one series or for each row of u (B, n)."""
    b = robust_bics(x, u, grid_basis)
    return b["smooth"] - b["sigmoid"]


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


def breakthroughness(x: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(x, kind="stable")
    ys = y[order]
    if len(ys) < 3:
        return math.nan
    i_y = math.copysign(ys.max() - ys.min(), int(np.argmax(ys)) - int(np.argmin(ys)))
    rms = math.sqrt(float(np.median(np.diff(ys) ** 2)))
    return i_y / rms if rms > 0 else math.inf
