"""The extrapolation check holds out the largest budget, measures seed noise from replicates, gives predictive
intervals that cover new runs at about the nominal rate, and the report warns when the approaches disagree."""

import numpy as np
import pandas as pd

from analysis import extrapolation, laws, plots, report
from analysis.fit import Fit
from analysis.table import from_frame

TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Hoffmann et al. (2022)


def isoflop_table(noise: float, seed: int = 0, replicates: int = 1) -> pd.DataFrame:
    """Five sizes per budget around each budget's optimum, four budgets over 1.5 decades."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in np.geomspace(1e18, 10 ** 19.5, 4):
        n_opt = laws.optimal(Fit(form="t", formula="", params={k: {"value": v} for k, v in
                                                               {**TRUE, **laws._derived(TRUE)}.items()},
                                 n_points=0), budget)["N_opt"]
        for n in n_opt * np.geomspace(0.25, 4, 5):
            for _ in range(replicates):
                d = budget / (6 * n)
                loss = laws.chinchilla_loss(TRUE, n, d) * np.exp(noise * rng.standard_normal())
                rows.append({"N": n, "D": d, "C": budget, "budget": budget, "loss": loss})
    return pd.DataFrame(rows)


def test_the_largest_budget_is_held_out_and_predicted():
    t = from_frame(isoflop_table(noise=0.002))
    fit_t, held, label = extrapolation.holdout_split(t)
    assert len(held) == 5 and held["budget"].nunique() == 1 and held["budget"].iloc[0] == t.df["budget"].max()
    assert fit_t.df["budget"].max() < held["budget"].min() and "largest budget" in label
    e = extrapolation.check(t, n_boot=60)
    assert e["max_abs_rel_error"] < 0.01 and e["seed_noise"] is None and "seed noise" not in e["interval"]
    assert all(r["predicted_low"] <= r["parameter_low"] and r["parameter_high"] <= r["predicted_high"]
               for r in e["rows"])  # the predictive interval holds the parameter-only one


def test_seed_noise_is_measured_from_replicates_and_widens_the_intervals():
    df = isoflop_table(noise=0.01, seed=1, replicates=3)
    noise = extrapolation.seed_noise(df)
    assert noise["cells"] == 20 and noise["runs"] == 60 and noise["dof"] == 40
    assert 0.007 < noise["rel_sd"] < 0.013  # the 1% drawn
    assert extrapolation.seed_noise(df.groupby(["N", "D"], as_index=False).first()) is None
    fit = laws.chinchilla(from_frame(df), n_boot=60)
    lo0, hi0 = laws.predicted_interval(fit, 1e9, 1e11)
    lo1, hi1 = laws.predicted_interval(fit, 1e9, 1e11, rel_sd=noise["rel_sd"])
    assert lo1 < lo0 and hi1 > hi0


def test_predictive_intervals_cover_new_runs_at_about_the_nominal_rate():
    inside = total = 0
    for seed in range(6):
        e = extrapolation.check(from_frame(isoflop_table(noise=0.01, seed=seed, replicates=2)), n_boot=60, seed=seed)
        inside += e["inside"]
        total += len(e["rows"])
    assert inside / total >= 0.85, (inside, total)  # 60 held-out runs against their 95% intervals


def test_the_report_leads_with_the_answer_and_warns_when_approaches_disagree(tmp_path):
    t = from_frame(isoflop_table(noise=0.003, replicates=2))
    result = report.fit_all(t, n_boot=40)
    doc = report.markdown(result, [], tmp_path)
    answer = doc.split("## The answer")[1].split("##")[0]
    assert "alpha =" in answer and "Held out the 10 runs of the largest budget" in answer
    assert "seed-to-seed standard deviation" in answer and answer.count("At C =") == 2
    chin = result.forms["chinchilla"]
    far = Fit(form="isoflop_akima", formula="", n_points=4,
              params={"a": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}})
    assert chin.params["a"]["ci_high"] < 0.85
    warnings = report.disagreements({"chinchilla": chin, "isoflop_akima": far})
    assert len(warnings) == 1 and "Approach 2" in warnings[0] and "Approach 3" in warnings[0]
    assert report.disagreements({"chinchilla": chin}) == []


def test_the_extrapolation_figure_marks_the_held_out_budget():
    result = report.fit_all(from_frame(isoflop_table(noise=0.003)), n_boot=20)
    fig = plots.extrapolation(result)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert sum("(held out)" in x for x in labels) == 1 and any(x.endswith("(held out)") and "3.2e+19" in x
                                                                 for x in labels), labels
