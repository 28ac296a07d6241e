"""The fits recover known laws, their intervals cover the truth, and published fits are reproduced."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import isoflop, laws, lse, report
from analysis.table import TableError, from_frame, load

DATA = Path(__file__).parent / "data"  # published tables, sources in data/README.md
TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Hoffmann et al. (2022)


def chinchilla_table(noise=0.005, seed=0, n_sizes=7, n_tokens=7):
    rng = np.random.default_rng(seed)
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, n_sizes), np.geomspace(1e8, 1e11, n_tokens))
    N, D = N.ravel(), D.ravel()
    loss = (TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]) * \
        np.exp(noise * rng.standard_normal(len(N)))
    return from_frame(pd.DataFrame({"N": N, "D": D, "loss": loss}))


def test_chinchilla_recovers_known_parameters():
    covered = {k: 0 for k in TRUE}
    for seed in range(4):
        fit = laws.chinchilla(chinchilla_table(seed=seed), n_boot=100, seed=seed)
        assert fit.value("E") == pytest.approx(TRUE["E"], abs=0.1)
        assert fit.value("alpha") == pytest.approx(TRUE["alpha"], abs=0.02)
        assert fit.value("beta") == pytest.approx(TRUE["beta"], abs=0.02)
        assert fit.value("a") == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.02)
        for k, v in TRUE.items():
            covered[k] += fit.params[k]["ci_low"] <= v <= fit.params[k]["ci_high"]
    assert all(c >= 3 for c in covered.values()), covered  # 95% intervals: 3 of 4 draws at the least


def test_fast_method_reaches_the_full_grid_optimum():
    t = chinchilla_table(noise=0.02, seed=3, n_sizes=5, n_tokens=5)
    logx, y = np.log(t.df[["N", "D"]].to_numpy()), np.log(t.df["loss"].to_numpy())
    assert lse.grid(laws.A_GRID, laws.ALPHA_GRID, laws.E_GRID, 2, True).shape == (4500, 5)
    # L-BFGS-B from all 4,500 starts takes minutes; a 243-start sub-grid checks the same mechanism.
    starts = lse.grid(np.array([0.0, 10, 20]), np.array([0.0, 1, 2]), np.array([-1.0, 0, 1]), 2, True)
    fast = lse.fit(logx, y, starts, 2, True, method="fast", refine=5)
    full = lse.fit(logx, y, starts, 2, True, method="full")
    assert fast[1] <= full[1] + 1e-12
    np.testing.assert_allclose(fast[0], full[0], rtol=1e-4, atol=1e-4)


def test_objective_gradient_matches_finite_differences():
    t = chinchilla_table()
    logx, y = np.log(t.df[["N", "D"]].to_numpy()), np.log(t.df["loss"].to_numpy())
    w = np.random.default_rng(0).integers(0, 3, len(y)).astype(float)
    theta = np.array([6.0, 6.0, 0.3, 0.3, 0.5])
    _, g = lse.objective(theta, logx, y, w, 2, True, 1e-3)
    eps = 1e-6
    num = [(lse.objective(theta + eps * e, logx, y, w, 2, True, 1e-3)[0] -
            lse.objective(theta - eps * e, logx, y, w, 2, True, 1e-3)[0]) / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-9)


def test_single_variable_intervals_cover_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e4, 1e8, 25)
    covered, trials = 0, 40
    for i in range(trials):
        y = (2.0 + 300 * x ** -0.4) * np.exp(0.01 * rng.standard_normal(len(x)))
        t = from_frame(pd.DataFrame({"N": x, "D": x, "loss": y}))
        fit = laws.single(t, "N", n_boot=100, seed=i)
        p = fit.params["alpha"]
        covered += p["ci_low"] <= 0.4 <= p["ci_high"]
    assert 0.82 <= covered / trials <= 1.0  # nominal 0.95; 3 binomial standard errors below


def test_kaplan_forms_recover_their_exponents():
    rng = np.random.default_rng(1)
    N, D = np.meshgrid(np.geomspace(1e5, 1e8, 6), np.geomspace(1e7, 1e10, 6))
    N, D = N.ravel(), D.ravel()
    loss = ((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095 * np.exp(0.002 * rng.standard_normal(len(N)))
    fit = laws.kaplan_nd(from_frame(pd.DataFrame({"N": N, "D": D, "loss": loss})), n_boot=20)
    assert fit.value("alpha_N") == pytest.approx(0.076, abs=0.01)
    assert fit.value("alpha_D") == pytest.approx(0.095, abs=0.01)
    S = D / 1e4
    loss = (8.8e13 / N) ** 0.076 + (2.1e3 / S) ** 0.76
    fit = laws.kaplan_ns(from_frame(pd.DataFrame({"N": N, "D": D, "steps": S, "loss": loss})), n_boot=20)
    assert fit.value("alpha_S") == pytest.approx(0.76, abs=0.02)


def test_isoflop_recovers_the_allocation_exponent():
    rows = []
    for C in (1e18, 1e19, 1e20, 1e21):
        n_opt = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / 0.62) * (C / 6) ** (0.28 / 0.62)
        for N in n_opt * np.geomspace(0.2, 5, 9):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "budget": C,
                         "loss": TRUE["E"] + TRUE["A"] / N ** 0.34 + TRUE["B"] / D ** 0.28})
    fit, minima = isoflop.approach2(from_frame(pd.DataFrame(rows)), n_boot=50)
    assert fit.value("a") == pytest.approx(0.28 / 0.62, abs=0.02)
    assert fit.value("b") == pytest.approx(0.34 / 0.62, abs=0.02)
    assert len(minima) == 4


def test_isoflop_drops_budgets_with_an_edge_minimum():
    rows = []
    for C, centre in ((1e18, 1e8), (1e19, 3e8), (1e20, 1e9), (1e21, 1e12)):  # last one: minimum off the grid
        for N in np.geomspace(1e7, 1e10, 7):
            rows.append({"N": N, "C": C, "loss": 2 + 0.1 * np.log(N / centre) ** 2})
    fit, minima = isoflop.approach2(from_frame(pd.DataFrame(rows)), n_boot=10)
    assert len(minima) == 3 and any("edge" in w for w in fit.warnings)


def test_published_li2025_fit_is_reproduced():
    # Li et al. (2025) report E=1.808, A=51.36, B=4.678e5, alpha=0.2002, beta=0.6357 (all 261 last checkpoints,
    # one row of which repeats another exactly: their fit counted it twice, ours by default once)
    t = load(DATA / "li2025_misfitting_scaling_results_last_ckpt_only.csv", loss="C4 Eval Loss", duplicates="keep")
    assert len(t.df) == 261
    fit = laws.chinchilla(t, n_boot=0)
    assert fit.value("E") == pytest.approx(1.808, rel=2e-3)
    assert fit.value("A") == pytest.approx(51.36, rel=5e-3)
    assert fit.value("B") == pytest.approx(4.678e5, rel=5e-3)
    assert fit.value("alpha") == pytest.approx(0.2002, abs=5e-4)
    assert fit.value("beta") == pytest.approx(0.6357, abs=5e-4)


def test_published_llama3_isoflop_exponent():
    # Llama 3 reports D*(C) = 0.29 C^0.53 from these IsoFLOP curves.
    raw = pd.read_csv(DATA / "llama3_isoflops_points_digitized.csv")
    raw["N"] = raw["compute_budget"] / (6 * raw["training_tokens"])
    t = from_frame(raw, c="compute_budget", d="training_tokens", loss="validation_loss", budget="compute_budget")
    fit, _ = isoflop.approach2(t, n_boot=100)
    assert fit.value("b") == pytest.approx(0.53, abs=0.03)
    assert fit.params["b"]["ci_low"] < 0.53 < fit.params["b"]["ci_high"]
    # Porian et al.'s procedure: log-loss Akima, noise bootstrap, weighted least squares
    porian, minima = isoflop.approach2(t, "akima", n_boot=1000)
    assert porian.form == "isoflop_akima" and len(minima) == 10 and (minima["log_N_opt_sd"] > 0).all()
    assert porian.value("b") == pytest.approx(0.53, abs=0.03)
    assert porian.params["b"]["ci_low"] < 0.53 < porian.params["b"]["ci_high"]
    # without the budget column the same 10 budgets come from clustering C
    unlabelled, minima = isoflop.approach2(from_frame(raw[["N", "training_tokens", "validation_loss"]]), "akima")
    assert len(minima) == 10 and unlabelled.value("b") == pytest.approx(porian.value("b"), abs=1e-9)


def test_porian_noise_scale_is_their_refinedweb_setting():
    assert isoflop.porian_noise(np.exp([2.0, 3.0, 5.0, 7.0, 8.0])) == pytest.approx(
        [0.002, 0.002, np.sqrt(0.002 * 0.05), 0.05, 0.05])


def test_budget_labels_group_runs_and_measured_compute_is_used():
    rng = np.random.default_rng(0)
    rows = []
    for label, C in (("small", 1e18), ("medium", 1e19), ("large", 1e20)):
        for N in np.geomspace(1e7, 1e9, 5):
            c = C * np.exp(rng.normal(0, 0.03))  # the runs missed their target by a few percent
            rows.append({"N": N, "C": c, "budget": label, "loss": 2 + 0.05 * np.log(N / 1e8) ** 2})
    df = pd.DataFrame(rows)
    t = from_frame(df)
    assert list(t.df["budget"].unique()) == ["small", "medium", "large"]  # names kept, not turned into NaN
    b = isoflop.budgets(t.df)
    assert b.nunique() == 3
    for label, g in t.df.groupby("budget"):
        assert b[g.index].iloc[0] == pytest.approx(np.exp(np.log(g["C"]).mean()))


def test_table_mapping_and_errors(tmp_path):
    df = pd.DataFrame({"Model Size": [1e6, 2e6, 4e6], "Training FLOP": [6e12, 2.4e13, 9.6e13],
                       "loss": [3.0, 2.8, np.nan], "status": ["completed", "completed", "completed"]})
    path = tmp_path / "pub.csv"
    df.to_csv(path, index=False)
    t = load(path, n="Model Size", c="Training FLOP")
    assert len(t.df) == 2 and t.df["D"].iloc[0] == pytest.approx(1e6)  # D = C / (6N)
    assert any("non-finite" in e for e in t.excluded)
    with pytest.raises(TableError, match="column 'Params' .* not in the table"):
        load(path, n="Params")
    with pytest.raises(TableError, match="needs D .* or C"):
        from_frame(pd.DataFrame({"N": [1.0], "loss": [2.0]}))
    iso = from_frame(pd.DataFrame({"compute_budget": [6e18], "training_tokens": [1e9], "validation_loss": [2.0]}))
    assert iso.df["N"].iloc[0] == pytest.approx(1e9)  # N = C / 6D when a table gives budget and tokens only
    with pytest.raises(TableError, match="no column for N.*give both D and C"):
        from_frame(pd.DataFrame({"tokens": [1e9], "loss": [2.0]}))
    failed = df.assign(status=["completed", "diverged", "failed"])
    t = from_frame(failed, n="Model Size", c="Training FLOP")
    assert len(t.df) == 1 and any("'diverged'" in e for e in t.excluded)


def test_report_on_synthetic_table_and_cli(tmp_path):
    t = chinchilla_table(noise=0.003)
    t.df.assign(C=6 * t.df["N"] * t.df["D"], status="completed").to_csv(tmp_path / "runs.csv", index=False)
    result = report.build(tmp_path, n_boot=30)
    doc = json.loads((tmp_path / "fit.json").read_text())
    assert {"chinchilla", "L(N)", "L(D)", "L(C)", "frontier"} <= set(doc["forms"])
    p = doc["forms"]["chinchilla"]["params"]["alpha"]
    assert p["ci_low"] <= p["value"] <= p["ci_high"]
    assert result.extrapolation["max_abs_rel_error"] < 0.02
    assert (tmp_path / "report.md").read_text().count("![") >= 4
    assert (tmp_path / "plots" / "loss_vs_C.png").stat().st_size > 10_000
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "predict", str(tmp_path), "--flops", "1e22",
                        "--n-boot", "30"], check=False, capture_output=True, text=True)
    assert r.returncode == 0 and "N_opt" in r.stdout and "tokens/param" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "fit", str(tmp_path), "--json", "--n-boot", "20"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["forms"]["chinchilla"]["params"]["beta"]["value"] > 0
    before = (tmp_path / "fit.json").read_text()
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "plot", str(tmp_path), "--format", "svg"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plots" / "loss_vs_N.svg").stat().st_size > 10_000
    assert (tmp_path / "fit.json").read_text() == before  # plot writes figures only
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "fit", str(tmp_path / "missing.csv")],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_analysis_imports_no_jax_or_training_code():
    code = ("import sys, analysis.report, analysis.cli, analysis.plots; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax') or "
            "m.startswith('scaling.train')]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_table_that_mixes_schedules_is_flagged_and_can_be_split(tmp_path):
    t = chinchilla_table(noise=0.003)
    df = t.df.assign(C=6 * t.df["N"] * t.df["D"], status="completed",
                     schedule=["cosine" if i % 2 else "wsd" for i in range(len(t.df))])
    df.to_csv(tmp_path / "runs.csv", index=False)
    mixed = report.fit_all(report.load(tmp_path / "runs.csv"), n_boot=10)
    assert any("mix learning-rate schedules (cosine: " in w and "schedule == 'wsd'" in w for w in mixed.warnings)
    one = report.fit_all(report.load(tmp_path / "runs.csv", where="schedule == 'wsd'"), n_boot=10)
    assert not any("schedules" in w for w in one.warnings)
