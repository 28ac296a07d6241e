"""The extrapolation check holds out the largest budget, measures seed noise from replicates, gives predictive
intervals that cover new runs at about the nominal rate, and the report warns when the approaches disagree."""

import numpy as np
import pandas as pd

from analysis import extrapolation, laws, plots, report, report_text
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


def held_out_rows(bias: float, seed: int = 0) -> list[dict]:
    """Five held-out cells of three seeds each, 1% seed noise, predicted with the given relative bias."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.geomspace(1e9, 1e10, 5):
        d = 1e21 / (6 * n)
        true = laws.chinchilla_loss(TRUE, n, d)
        rows += [{"N": n, "D": d, "C": 1e21, "loss": true * np.exp(0.01 * rng.standard_normal()),
                  "predicted": true * (1 + bias)} for _ in range(3)]
    return rows


def test_seed_replicates_at_held_out_cells_separate_noise_from_misfit(tmp_path):
    right = extrapolation.noise_and_misfit(held_out_rows(bias=0.0))
    assert 0.006 < right["seed_rel_sd"] < 0.014 and right["seed_cells"] == 5 and right["seed_dof"] == 10
    assert [c["runs"] for c in right["cells"]] == [3] * 5 and not right["systematic"]
    assert all(abs(c["noise_units"]) < 3.5 for c in right["cells"]) and right["max_abs_rel_error"] < 0.02
    off = extrapolation.noise_and_misfit(held_out_rows(bias=0.05))
    assert off["systematic"] and abs(off["mean_log_error"] - np.log(1.05)) < 0.01
    assert off["mean_log_error_se"] == off["seed_rel_sd"] / np.sqrt(15)
    assert all(c["noise_units"] > 5 for c in off["cells"])  # each cell's mean is far outside its noise
    assert extrapolation.noise_and_misfit(held_out_rows(bias=0.05)[::3]) is None  # one seed per cell: no verdict
    runaway = [{**r, "predicted": float("nan")} for r in held_out_rows(bias=0.0)]
    assert extrapolation.noise_and_misfit(runaway)["systematic"] is None  # no prediction, no verdict
    assert "cannot be told apart" in report_text._misfit_verdict(extrapolation.noise_and_misfit(runaway))
    result = report.fit_all(from_frame(isoflop_table(noise=0.003, replicates=2)), n_boot=20)
    assert result.extrapolation["noise_and_misfit"]["cells"][0]["runs"] == 2
    doc = report_text.markdown(result, [], tmp_path)
    assert "Averaged over the seeds of each held-out cell" in doc.split("## The answer")[1].split("##")[0]
    assert "Noise against misfit" in doc and doc.count("| 2 |") >= 5


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
    doc = report_text.markdown(result, [], tmp_path)
    answer = doc.split("## The answer")[1].split("##")[0]
    assert "alpha =" in answer and "Held out the 10 runs of the largest budget" in answer
    assert "seed-to-seed standard deviation" in answer and answer.count("At C =") == 2
    chin = result.forms["chinchilla"]
    far = Fit(form="isoflop_akima", formula="", n_points=4,
              params={"a": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}})
    assert chin.params["a"]["ci_high"] < 0.85
    warnings = report_text.disagreements({"chinchilla": chin, "isoflop_akima": far})
    assert len(warnings) == 1 and "Approach 2" in warnings[0] and "Approach 3" in warnings[0]
    assert report_text.disagreements({"chinchilla": chin}) == []


def test_the_extrapolation_figure_marks_the_held_out_budget():
    result = report.fit_all(from_frame(isoflop_table(noise=0.003)), n_boot=20)
    fig = plots.extrapolation(result)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert sum("(held out)" in x for x in labels) == 1 and any(x.endswith("(held out)") and "3.2e+19" in x
                                                                 for x in labels), labels


def test_a_law_whose_exponent_ran_off_still_predicts_what_its_data_saw():
    # alpha = 107 on a flat ridge: A = N_c^alpha overflows a float, the term A / N^alpha the data saw does not
    N, D = np.array([3.9e4, 1.5e5]), np.array([1.06e7, 2.7e6])
    ridge = {"E": 0.0, "alpha": 107.0, "B": 14.75, "beta": 0.145}
    with np.errstate(over="ignore"):
        ridge["A"] = np.exp(107 * np.log(2.3e4))
    logs = {**ridge, "log_A": 107 * np.log(2.3e4), "log_B": np.log(14.75)}
    assert np.isinf(ridge["A"]) and np.isnan(laws.chinchilla_loss(ridge, N, D)).all()
    assert np.allclose(laws.chinchilla_loss(logs, N, D), 14.75 / D ** 0.145)
    usual = {**TRUE, "log_A": np.log(TRUE["A"]), "log_B": np.log(TRUE["B"])}
    assert np.allclose(laws.chinchilla_loss(usual, N, D), laws.chinchilla_loss(TRUE, N, D), rtol=1e-12)


def test_the_main_jobs_check_is_finite_whatever_the_order_of_its_rows():
    # the first main job's 21 fitting runs once ran alpha off to 107 (A overflowing) in the order of
    # results/reference-seeds-long and stopped at 43 in the order of results/reference-grid1: the tables are now
    # sorted as they are read, so both orders give one law, and the check's predictions are the law the figure draws
    from analysis.table import load

    ref = extrapolation.check(load("results/reference-grid1"), above_flops=1e12, n_boot=0)
    seeds = extrapolation.check(load("results/reference-seeds-long", where="C < 5e12"), above_flops=1e12, n_boot=0)
    assert len(ref["rows"]) == 5 and len(seeds["rows"]) == 15
    assert abs(ref["max_abs_rel_error"] - 0.0926) < 5e-4
    assert abs(seeds["max_abs_rel_error"] - ref["max_abs_rel_error"]) < 1e-6
    assert np.isfinite(seeds["scatter"]["residual_sd"]) and seeds["noise_and_misfit"]["systematic"]
    assert seeds["fit"]["alpha"] == ref["fit"]["alpha"] and seeds["fit"]["log_A"] == ref["fit"]["log_A"]
    N, D = (np.array([r[k] for r in seeds["rows"]]) for k in ("N", "D"))
    assert np.allclose(laws.chinchilla_loss(seeds["fit"], N, D), [r["predicted"] for r in seeds["rows"]])
