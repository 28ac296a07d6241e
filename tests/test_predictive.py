"""Predictive intervals on published runs split by compute: the law fitted below a compute percentile predicts the
runs above it, and the predictive interval (residual scatter, seed noise, extrapolation drift) covers at least 85%
of them where the parameter-only interval does not."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import laws, predictive
from analysis.table import Table, from_frame, load

DATA = Path(__file__).parent / "data"  # sources in data/README.md
PUBLISHED = {
    "llama3": lambda: load(DATA / "llama3_isoflops_points_digitized.csv"),  # N = C / 6D
    "li2025": lambda: load(DATA / "li2025_misfitting_scaling_results_last_ckpt_only.csv", loss="C4 Eval Loss",
                           best_per=("N", "D")),
    "openathena": lambda: load(DATA / "openathena_misfitting_isoflops.csv", n="params", d="tokens"),
}


def split_coverage(t: Table, q: float, n_boot: int = 100) -> tuple[float, float, int]:
    """(predictive coverage, parameter-only coverage, held-out runs) fitting below the q-quantile of log C."""
    logc = np.log(t.df["C"])
    below = logc <= np.quantile(logc, q)
    fit_t, held = Table(t.df[below].reset_index(drop=True), t.source), t.df[~below]
    fit = laws.chinchilla(fit_t, n_boot=n_boot)
    s = predictive.scatter(fit_t, fit)
    pred = param = 0
    for i, r in held.iterrows():
        lo, hi = predictive.interval(fit, s, r["N"], r["D"], r["C"], seed=i)
        p_lo, p_hi = laws.predicted_interval(fit, r["N"], r["D"])
        pred += lo <= r["loss"] <= hi
        param += p_lo <= r["loss"] <= p_hi
    return pred / len(held), param / len(held), len(held)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_predictive_intervals_cover_published_larger_runs(name):
    coverage, parameter_only, n = split_coverage(PUBLISHED[name](), q=0.7)
    assert n >= 20
    assert coverage >= 0.85, (name, coverage, parameter_only)
    assert coverage >= parameter_only


def test_parameter_only_intervals_are_too_narrow_on_llama3():
    # Llama 3's digitized IsoFLOP points lie within 0.4% of the law, but its error grows beyond the fitted budgets:
    # the parameter-only interval covers few of the larger runs, the drift term restores coverage.
    coverage, parameter_only, _ = split_coverage(PUBLISHED["llama3"](), q=0.5)
    assert parameter_only < 0.5 and coverage >= 0.85


def test_drift_is_zero_for_an_exact_law_and_grows_with_misfit():
    true = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
    rows = [{"N": n, "D": c / (6 * n), "C": c} for c in np.geomspace(1e18, 1e21, 7) for n in
            np.geomspace(3e7, 3e9, 6)]
    df = pd.DataFrame(rows)
    exact = df.assign(loss=laws.chinchilla_loss(true, df["N"], df["D"]))
    fit = laws.chinchilla(from_frame(exact), n_boot=0)
    s = predictive.scatter(from_frame(exact), fit)
    assert s.residual_sd < 1e-4 and s.drift_per_decade < 1e-3 and s.backtests > 0
    # a loss that keeps falling faster at large compute than any law fitted below can follow
    bent = df.assign(loss=exact["loss"] * (df["C"] / 1e18) ** (-0.01 * np.log10(df["C"] / 1e18)))
    s = predictive.scatter(from_frame(bent), laws.chinchilla(from_frame(bent), n_boot=0))
    assert s.drift_per_decade > 0.005
    assert s.sd(s.c_fit_max * 100) > s.sd(s.c_fit_max * 10) > s.sd(s.c_fit_max) == max(s.residual_sd, s.seed_sd)


@pytest.mark.parametrize("runaway_fits", [1, 99])
def test_backtests_whose_law_runs_away_are_counted_and_left_out(monkeypatch, runaway_fits):
    true = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
    df = pd.DataFrame([{"N": n, "D": c / (6 * n), "C": c} for c in np.geomspace(1e18, 1e21, 7)
                       for n in np.geomspace(3e7, 3e9, 6)])
    t = from_frame(df.assign(loss=laws.chinchilla_loss(true, df["N"], df["D"])))
    real, calls = laws.chinchilla, []

    def some_run_away(table, **kw):
        fit = real(table, **kw)
        calls.append(1)
        if len(calls) <= runaway_fits:
            fit.predict = lambda N, D: np.full(np.shape(N), np.inf)  # alpha = -500, A N^500: every prediction overflows
        return fit

    monkeypatch.setattr(predictive.laws, "chinchilla", some_run_away)
    k, used, runaway = predictive.drift(t, 0.0)
    assert runaway > 0
    if runaway_fits == 1:  # the other backtests still measure the (zero) drift of an exact law
        assert used > 0 and k < 1e-3
    else:  # nothing left to measure drift with: the interval must not pretend to know it
        assert used == 0 and k == float("inf")


def test_a_table_too_small_to_backtest_gets_the_assumed_drift_and_says_so():
    """Two budgets of five runs: no split leaves 8 runs to refit, so the drift cannot be measured. The interval
    must still widen beyond the fitted compute (in our backtests intervals without drift held 19 of 25 runs one
    budget up), and the report must say the drift is assumed."""
    true = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
    df = pd.DataFrame([{"N": n, "D": c / (6 * n), "C": c} for c in (1e18, 10 ** 18.5) for n in
                       np.geomspace(3e7, 3e9, 5)])
    t = from_frame(df.assign(loss=laws.chinchilla_loss(true, df["N"], df["D"])))
    s = predictive.scatter(t, laws.chinchilla(t, n_boot=0))
    assert s.backtests == 0 and s.assumed and s.drift_per_decade == predictive.ASSUMED_DRIFT
    assert "assumed" in s.describe() and s.to_json()["assumed"]
    assert s.sd(s.c_fit_max * 10) >= predictive.ASSUMED_DRIFT > s.sd(s.c_fit_max)
