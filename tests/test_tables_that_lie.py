"""Tables that would mislead a fit are caught: replicates are runs equal in every design column, repeated rows are
counted once (or refused), text where a number belongs is named, a table too small for any law is one line, row
order changes no number, and a law's interval widens below its fitted compute as well as above it."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import extrapolation, laws, predictive
from analysis.table import TableError, from_frame

TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def grid(seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"N": n, "D": c / (6 * n), "C": c, "budget": c} for c in np.geomspace(1e18, 1e20, 4)
            for n in np.geomspace(5e7, 2e9, 5)]
    df = pd.DataFrame(rows)
    return df.assign(loss=laws.chinchilla_loss(TRUE, df["N"], df["D"]) * np.exp(noise * rng.standard_normal(len(df))))


def test_runs_that_differ_in_unique_tokens_are_not_seed_replicates():
    df = grid().iloc[:4]
    repeated = pd.concat([df.assign(U=1e9), df.assign(U=1e8, loss=df["loss"] * 1.1)], ignore_index=True)
    assert extrapolation.seed_noise(from_frame(repeated, unique_tokens="U").df) is None
    seeds = pd.concat([df.assign(U=1e9, seed=0), df.assign(U=1e9, seed=1, loss=df["loss"] * 1.01)], ignore_index=True)
    noise = extrapolation.seed_noise(from_frame(seeds, unique_tokens="U").df)
    assert noise["cells"] == 4 and noise["rel_sd"] == pytest.approx(np.log(1.01) / np.sqrt(2), rel=1e-6)


def test_a_table_with_every_row_doubled_is_counted_once_or_refused():
    df = grid()
    doubled = pd.concat([df, df], ignore_index=True)
    t = from_frame(doubled)
    assert len(t.df) == len(df) and any("20 row(s) repeating an earlier row exactly (lines 22, 23, 24, 25, 26, ... of"
                                        in x for x in t.excluded)
    assert extrapolation.seed_noise(t.df) is None  # no zero-noise "replicates"
    with pytest.raises(TableError, match="20 row\\(s\\) repeat an earlier row exactly"):
        from_frame(doubled, duplicates="refuse")
    assert len(from_frame(doubled, duplicates="keep").df) == 2 * len(df)


def test_text_in_a_loss_cell_is_named_as_text():
    df = grid().astype({"loss": object})
    df.loc[[2, 5], "loss"] = ["n/a", "diverged"]
    t = from_frame(df)
    assert len(t.df) == len(df) - 2
    assert "2 row(s) whose loss ('loss') is text, not a number: 'n/a', 'diverged'" in t.excluded
    assert not any("non-finite" in x for x in t.excluded)


def test_a_table_too_small_for_any_law_is_one_line_exit_2(tmp_path):
    grid().iloc[:3].to_csv(tmp_path / "small.csv", index=False)
    for command in ("fit", "report"):
        r = subprocess.run([sys.executable, "-m", "scaling.cli", command, str(tmp_path / "small.csv"), "--n-boot", "5"],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "3 usable row(s) are too few to fit any law" in r.stderr and "Traceback" not in r.stderr


def test_row_order_changes_no_number():
    df = grid(noise=0.02)
    a = laws.chinchilla(from_frame(df), n_boot=30)
    b = laws.chinchilla(from_frame(df.sample(frac=1, random_state=3)), n_boot=30)
    assert a.params == b.params


def test_the_drift_widens_intervals_below_the_fitted_compute_too():
    s = predictive.Scatter(residual_sd=0.01, seed_sd=0.0, drift_per_decade=0.05, c_fit_max=1e20, backtests=10,
                           c_fit_min=1e18)
    assert s.sd(1e19) == pytest.approx(0.01)
    assert s.sd(1e17) == pytest.approx(np.hypot(0.01, 0.05)) == pytest.approx(s.sd(1e21))
    t = from_frame(grid())
    assert predictive.scatter(t, laws.chinchilla(t, n_boot=0)).c_fit_min == t.df["C"].min()


PORIAN_RUNS = Path(__file__).parent / "data" / "porian2024_isoflop_runs.csv"


@pytest.mark.parametrize("config", ["rw_tuned_short_const_standard_val", "owt2_base_short_chinchilla_standard_val",
                                    "rw_base_long_kaplan_standard_val"])
def test_marin_style_best_runs_below_the_fitted_compute_are_covered_as_often_as_those_above(config):
    """As Marin predicted its validation-optimal runs from IsoFLOP runs: the joint law fitted on the middle eight of
    Porian et al.'s twelve budgets predicts the best run of the two budgets below and the two above (over all 15
    of their configurations: 30 of 30 below and 30 of 30 above inside). Without the drift below the fitted compute
    (c_fit_min None, as before), the best run of rw_tuned_short_const_standard_val's smallest budget, missed by
    18.5%, falls outside its interval."""
    raw = pd.read_csv(PORIAN_RUNS)
    df = raw[raw["config"] == config].rename(columns={"D_tokens": "D", "flops": "C"})[["N", "D", "C", "loss"]]
    t = from_frame(df)
    budgets = np.sort(t.df["C"].unique())
    lo, hi = budgets[2], budgets[-3]
    sub = t.rows(t.df[(t.df["C"] >= lo) & (t.df["C"] <= hi)])
    fit = laws.chinchilla(sub, n_boot=100, seed=0)
    s = predictive.scatter(sub, fit)

    def covered(rows, scatter) -> list[bool]:
        best = rows.loc[rows.groupby("C")["loss"].idxmin()]
        return [lo_ <= r["loss"] <= hi_ for _, r in best.iterrows()
                for lo_, hi_ in [predictive.interval(fit, scatter, r["N"], r["D"])]]

    below, above = covered(t.df[t.df["C"] < lo], s), covered(t.df[t.df["C"] > hi], s)
    assert len(below) == len(above) == 2 and sum(below) == sum(above) == 2
    if config == "rw_tuned_short_const_standard_val":
        assert sum(covered(t.df[t.df["C"] < lo], dataclasses.replace(s, c_fit_min=None))) < 2


def test_perplexity_columns_fall_as_models_improve_and_a_named_pair_always_has_a_verdict():
    from analysis import emergence, emergence_report

    assert emergence.lower_is_better("ppl") and emergence.lower_is_better("wikitext_word_perplexity")
    assert emergence.lower_is_better("lambada_ppl") and not emergence.lower_is_better("apple_acc")
    assert emergence.lower_is_better("score", "mmlu/score", named=("mmlu/score",))
    params = np.geomspace(1e7, 1e10, 12)
    x = np.log10(params)
    df = pd.DataFrame({"params": params, "acc": np.where(x > 8.7, 0.8, 0.0) + 0.01 * np.sin(7 * x),
                       "logp": -3.0 + 0.6 * (x - 7), "ppl": np.exp(3.0 - 0.6 * (x - 7))})
    results = emergence_report.analyse_table(df, metrics=["acc", "logp", "ppl"], axes=["params"],
                                             pairs={"acc": "logp"}, n_boot=50)
    by = {r["metric"]: r for r in results}
    assert by["acc"]["counterpart"] == "logp" and by["acc"]["counterpart_verdict"] == by["logp"]["verdict"]
    assert by["ppl"]["fit"]["higher_is_better"] is False and by["logp"]["fit"]["higher_is_better"] is True
    lines = "\n".join(emergence_report.table_lines(results))
    assert "logp: None" not in lines and f"logp: {by['logp']['verdict']}" in lines


def test_one_runaway_backtest_does_not_make_every_interval_unbounded(monkeypatch):
    t = from_frame(grid(noise=0.0))
    real, calls = laws.chinchilla, []

    def one_far_off(table, **kw):
        fit = real(table, **kw)
        calls.append(1)
        if len(calls) == 1:  # finite, but 70 times the loss one decade out: 4,000% per decade
            fit.predict = lambda N, D: 70 * laws.chinchilla_loss(TRUE, np.asarray(N), np.asarray(D))
        return fit

    monkeypatch.setattr(predictive.laws, "chinchilla", one_far_off)
    k, used, runaway = predictive.drift(t, 0.0)
    assert runaway > 0 and used > 0 and k < 0.01


@pytest.mark.parametrize("config", ["owt2_base_long_kaplan_standard_val", "owt2_tuned_short_const_standard_val",
                                    "rw_base_short_chinchilla_standard_val"])
def test_porians_noise_follows_the_dataset_and_their_intervals_are_reproduced(config):
    """Porian et al.'s IsoFLOP bootstrap on their own runs (tests/data/README.md): the exponent a within 0.01 of
    theirs and the 95% interval within 1.3x of their width, on OpenWebText2 (noise 0.01) as on RefinedWeb."""
    from pathlib import Path

    from analysis import isoflop
    from analysis.table import load

    data = Path(__file__).parent / "data"
    published = pd.read_csv(data / "porian2024_published_fits.csv").set_index("config").loc[config]
    t = load(data / "porian2024_isoflop_runs.csv", where=f"config == '{config}'", n="N", d="D_tokens", c="flops",
             budget="flops")
    noise = isoflop.dataset_noise(t.df)
    assert noise == (0.01 if config.startswith("owt2") else 0.002)
    fit, _ = isoflop.approach2(t, "akima", n_boot=1000, abs_noise=noise)
    a = fit.params["a"]
    assert abs(a["value"] - published["a_N_exponent"]) < 0.01
    width = (a["ci_high"] - a["ci_low"]) / (published["a_CI95_hi"] - published["a_CI95_lo"])
    assert 1 / 1.3 < width < 1.3


def test_a_point_estimate_never_lies_outside_its_own_interval():
    """Seen on a 4-run sweep: Approach 1's a = 0.2567 with a bootstrap interval [0.2569, 0.5623]."""
    from analysis.fit import Fit, judge, summarise

    samples = {"a": np.linspace(0.2569, 0.5623, 200), "k_N": np.linspace(3.0, 13.99, 200)}
    params = summarise({"a": 0.2567, "k_N": 14.05}, samples)
    for name, value in (("a", 0.2567), ("k_N", 14.05)):
        assert params[name]["ci_low"] <= value <= params[name]["ci_high"] and "widened" in params[name]
    fit = judge(Fit(form="frontier", formula="N_opt = k_N C^a", params=params, n_points=4, samples=samples), 2)
    assert sum("did not contain the fitted value" in w for w in fit.warnings) == 2
