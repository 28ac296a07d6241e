"""Predictive intervals: where one new run at (N, D) should land, not only where the fitted curve lies.

A bootstrap over runs gives the parameter-only interval: the uncertainty of the curve. A single run also scatters
about the curve, and a law fitted on small budgets drifts from the truth as it is extrapolated further. The
predictive interval multiplies every bootstrap refit's prediction by exp(eps), eps ~ Normal(0, sigma(C)), with

    sigma(C)^2 = max(residual sd, seed sd)^2 + (drift * decades outside [C_fit_min, C_fit_max])^2

* residual sd: the root mean square of log-loss residuals about the law, over n - p degrees of freedom. It holds
  run-to-run noise and the law's misfit at the fitted scale.
* seed sd: the pooled run-to-run scatter of replicate runs (analysis.extrapolation.seed_noise), when there are any.
* drift: how fast the law's error grows per decade of compute beyond the largest fitted run (and, at the same rate,
  below the smallest: a law extrapolates downward too), measured on the fitted
  runs alone by backtests: refit on the runs below the 50th, 60th, 70th and 80th percentile of log C, predict the
  rest; drift^2 is the mean over backtest predictions at least 0.1 decade beyond their fit of
  max(0, e^2 - sd^2) / distance^2 (e: the log error of the backtest prediction, distance in decades of C).
  Predictions of a backtest law that ran off (to infinity, or by more than RUNAWAY per decade) are left out and
  counted; with none left the drift, and so the interval, is unbounded. A table too small to backtest (fewer than
  MIN_BACKTEST_FIT runs below every split, e.g. two budgets) gets ASSUMED_DRIFT, said so: without it the interval
  holds only the scatter at the fitted scale, and in our backtests such intervals held 19 of 25 held-out runs one
  budget up (docs/protocol.md).

Calibrated on published runs split by compute (fit below a percentile, predict above; docs/methods.md): residual
scatter alone covered 26% to 53% of Llama 3's larger IsoFLOP runs, whose residuals are small but whose
extrapolation error grows with distance; with the drift term every split reached at least 85%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis import laws
from analysis.fit import Fit
from analysis.table import Table

BACKTEST_QUANTILES = (0.5, 0.6, 0.7, 0.8)
MIN_BACKTEST_FIT = 8  # fewer runs than this below a split: that backtest is skipped
MIN_DRIFT_DECADES = 0.1  # backtest predictions closer than this to their fit say little about drift per decade
# The drift of a table too small to measure its own: the median of the 14 drifts our backtests measured (3.3% to
# 15.5% per decade; docs/protocol.md, "Intervals that cover")
ASSUMED_DRIFT = 0.09
# A backtest prediction off by more than this per decade came from a law that ran away: in our backtests the
# largest drift of a law that held was 0.34 per decade, and one that ran away missed by 36 per decade
RUNAWAY = 1.0
N_CHINCHILLA_PARAMS = 5


@dataclass
class Scatter:
    """What a predictive interval adds to the bootstrap of the parameters."""

    residual_sd: float  # relative (log-loss) scatter of the fitted runs about the law
    seed_sd: float  # run-to-run scatter of replicates; 0 without them
    drift_per_decade: float  # growth of the law's error per decade of extrapolation in C; inf: backtests ran away
    c_fit_max: float  # the largest compute the law was fitted on
    backtests: int  # backtest predictions the drift was measured on
    runaway: int = 0  # backtest predictions left out because the backtest law ran off to infinity
    assumed: bool = False  # drift_per_decade is ASSUMED_DRIFT: the table is too small to backtest
    c_fit_min: float | None = None  # the smallest compute the law was fitted on: below it the law extrapolates too

    def sd(self, C) -> np.ndarray:
        logc = np.log10(np.asarray(C, float))
        below = np.log10(self.c_fit_min) - logc if self.c_fit_min else np.zeros_like(logc)
        beyond = np.maximum(0.0, np.maximum(logc - np.log10(self.c_fit_max), below))
        with np.errstate(invalid="ignore"):  # inf drift times 0 decades is no drift
            drift = np.where(beyond > 0, self.drift_per_decade * beyond, 0.0)
        return np.hypot(max(self.residual_sd, self.seed_sd), drift)

    def describe(self) -> str:
        parts = [f"residual scatter {100 * self.residual_sd:.2f}%"]
        if self.seed_sd:
            parts.append(f"seed noise {100 * self.seed_sd:.2f}%")
        runaway = f"; {self.runaway} more from backtest laws that ran away left out" if self.runaway else ""
        where = ("assumed: too few runs to backtest (the median of our backtests, docs/protocol.md)" if self.assumed
                 else f"{self.backtests} backtest predictions{runaway}" if self.backtests
                 else f"unbounded: all {self.runaway} backtest predictions came from laws that ran away")
        parts.append(f"extrapolation drift {100 * self.drift_per_decade:.2f}% per decade of C outside "
                     f"[{self.c_fit_min or self.c_fit_max:.3g}, {self.c_fit_max:.3g}] ({where})")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"residual_sd": self.residual_sd, "seed_sd": self.seed_sd, "drift_per_decade": self.drift_per_decade,
                "c_fit_max": self.c_fit_max, "c_fit_min": self.c_fit_min, "backtests": self.backtests,
                "runaway": self.runaway, "assumed": self.assumed}


def log_residuals(fit: Fit, df) -> np.ndarray:
    """log(predicted) - log(observed) of a Chinchilla fit's point prediction, run by run."""
    return np.log(np.asarray(fit.predict(df["N"].to_numpy(float), df["D"].to_numpy(float)), float)) \
        - np.log(df["loss"].to_numpy(float))


def residual_sd(fit: Fit, df, n_params: int = N_CHINCHILLA_PARAMS) -> float:
    r = log_residuals(fit, df)
    return float(np.sqrt((r ** 2).sum() / max(1, len(r) - n_params)))


def drift(t: Table, sd: float, method: str = "fast") -> tuple[float, int, int]:
    """(drift per decade, backtest predictions used, predictions left out because their backtest law ran away):
    refit below compute percentiles, predict above."""
    df = t.df
    logc = np.log10(df["C"].to_numpy(float))
    errors, distances = [], []
    for q in BACKTEST_QUANTILES:
        below = logc <= np.quantile(logc, q)
        if below.sum() < MIN_BACKTEST_FIT or below.all():
            continue
        sub = laws.chinchilla(t.rows(df[below]), n_boot=0, method=method)
        errors.append(log_residuals(sub, df[~below]))
        distances.append(logc[~below] - logc[below].max())
    if not errors:
        return 0.0, 0, 0
    e, d = np.concatenate(errors), np.concatenate(distances)
    far = d >= MIN_DRIFT_DECADES
    with np.errstate(invalid="ignore"):  # the part of each error beyond the scatter, per decade
        per_decade = np.sqrt(np.maximum(e ** 2 - sd ** 2, 0.0)) / d
    # a law whose exponent ran off (a prediction overflowing, or missing by more than RUNAWAY per decade) says
    # nothing about how the fitted law drifts: counted apart, so one such backtest cannot make every interval
    # unbounded
    finite = far & np.isfinite(e) & (per_decade <= RUNAWAY)
    runaway = int((far & ~finite).sum())
    if not finite.any():
        return (float("inf") if runaway else 0.0), 0, runaway
    # pooled as a root mean square
    return float(np.sqrt(np.mean(per_decade[finite] ** 2))), int(finite.sum()), runaway


def scatter(t: Table, fit: Fit, seed_sd: float = 0.0, method: str = "fast") -> Scatter:
    """The scatter terms of a Chinchilla fit on table t."""
    sd = residual_sd(fit, t.df)
    k, n, runaway = drift(t, max(sd, seed_sd), method)
    assumed = n == 0 and runaway == 0
    return Scatter(residual_sd=sd, seed_sd=seed_sd, drift_per_decade=ASSUMED_DRIFT if assumed else k,
                   c_fit_max=float(t.df["C"].max()), backtests=n, runaway=runaway, assumed=assumed,
                   c_fit_min=float(t.df["C"].min()))


def spread(loss_samples, s: Scatter, C: float, seed: int = 0) -> tuple[float, float]:
    """95% predictive interval from bootstrap samples of a predicted loss at compute C (e.g. the optimal loss)."""
    return laws.noisy_interval(loss_samples, float(s.sd(C)), seed)


def interval(fit: Fit, s: Scatter, N: float, D: float, C: float | None = None, seed: int = 0) -> tuple[float, float]:
    """95% predictive interval of one new run at (N, D); C defaults to 6ND."""
    return laws.predicted_interval(fit, N, D, float(s.sd(6 * N * D if C is None else C)), seed)
