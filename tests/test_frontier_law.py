"""The frontier law: each budget's best loss (a mean over seeds), a power law through them, its check on the held-out
budget, its backtests, and the counting conventions it can be fitted in."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import backtests, frontier_law, report
from analysis.table import TableError, from_frame, load

GAMMA, A = 0.12, 60.0


def frontier_table(noise: float = 0.0, seed: int = 0, budgets=(1e11, 10 ** 11.5, 1e12, 10 ** 12.5),
                   seeds_at_best: int = 1, edge: bool = False, n_total: bool = False) -> pd.DataFrame:
    """Five sizes per budget around its best; the best reaches A C^-GAMMA (C = 6ND), the others 2% to 8% more.
    With edge, the two smallest budgets sample only sizes above their best; with n_total, an N_total column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, c in enumerate(budgets):
        n_best = 1e4 * (c / 1e11) ** 0.5
        offsets = (0, 1, 2, 3, 4) if edge and i < 2 else (-2, -1, 0, 1, 2)
        for k in offsets:
            n = n_best * 1.5 ** k
            best = A * c ** -GAMMA
            for s in range(seeds_at_best if k == 0 else 1):
                loss = best * (1 + 0.02 * k * k) * np.exp(noise * rng.standard_normal())
                rows.append({"N": n, "D": c / (6 * n), "C": c, "budget": c, "loss": loss, "seed": s,
                             "N_total": n + 4096})
    return pd.DataFrame(rows) if n_total else pd.DataFrame(rows).drop(columns="N_total")


def test_a_power_law_frontier_is_recovered_and_predicts_the_held_out_budget():
    t = from_frame(frontier_table())
    law = frontier_law.fit(t, n_boot=50)
    assert not law.saturating and "needs" not in (law.why_power or "") and len(law.points) == 4
    assert abs(law.params["gamma"]["value"] - GAMMA) < 1e-6 and abs(law.params["A"]["value"] / A - 1) < 1e-4
    assert np.allclose(law.points["loss"], A * law.points["C"] ** -GAMMA)
    check = frontier_law.check(t, n_boot=50)
    assert check["holdout"].startswith("the 5 runs of the largest budget") and len(check["rows"]) == 1
    assert abs(check["rows"][0]["rel_error"]) < 1e-6
    beyond = frontier_law.beyond(law)
    assert [round(b["C"] / law.points["C"].max()) for b in beyond] == [10, 100]
    assert abs(beyond[0]["loss"] / (A * beyond[0]["C"] ** -GAMMA) - 1) < 1e-6


def test_the_best_loss_of_a_budget_is_the_mean_over_the_seeds_of_its_best_cell():
    df = frontier_table(seeds_at_best=3)
    best = (df["seed"] > 0) & (df["C"] == df["C"].max())
    df.loc[best, "loss"] *= np.where(df.loc[best, "seed"] == 1, 1.05, 0.97)  # seeds at 1.0, 1.05 and 0.97
    points = frontier_law.best_per_budget(from_frame(df))
    top = points.iloc[-1]
    assert top["seeds"] == 3 and top["loss"] == pytest.approx(A * df["C"].max() ** -GAMMA * (1.05 * 0.97) ** (1 / 3))
    assert (points["seeds"].iloc[:-1] == 3).all()  # every budget's best cell has its seeds


def test_noisy_held_out_best_losses_are_covered_at_about_the_nominal_rate():
    inside = errors = 0
    for seed in range(20):
        t = from_frame(frontier_table(noise=0.01, seed=seed, seeds_at_best=3,
                                      budgets=tuple(np.geomspace(1e11, 1e13, 6))))
        row = frontier_law.check(t, n_boot=100, seed=seed)["rows"][0]
        inside += row["inside"]
        errors += abs(row["rel_error"]) < 0.05
    assert inside >= 17 and errors >= 17


def test_e_is_used_only_where_its_backtests_beat_the_pure_law():
    rows = []
    for c in np.geomspace(1e11, 1e14, 7):  # three sizes per budget, the middle one 1.5 + 40 C^-0.2, the others 3% worse
        n_best = 1e4 * (c / 1e11) ** 0.5
        for k in (-1, 0, 1):
            rows.append({"N": n_best * 2.0 ** k, "D": c / (6 * n_best * 2.0 ** k), "C": c, "budget": c,
                         "loss": (1.5 + 40.0 * c ** -0.2) * (1 + 0.03 * k * k)})
    saturating = pd.DataFrame(rows)
    law = frontier_law.fit(from_frame(saturating), n_boot=30)
    assert law.saturating and abs(law.params["E"]["value"] - 1.5) < 0.01
    few = frontier_law.fit(from_frame(saturating.iloc[:12]), n_boot=30)
    assert not few.saturating and "at least 5 budgets" in few.why_power


def test_a_budget_of_one_size_is_not_a_frontier_point():
    one_each = pd.DataFrame({"N": [1e4, 2e4, 4e4], "C": [1e11, 1e12, 1e13], "loss": [3.0, 2.5, 2.1]})
    one_each["D"] = one_each["C"] / (6 * one_each["N"])
    with pytest.raises(ValueError, match="at least 2 compute budgets of 2 or more sizes each; the table has 0"):
        frontier_law.fit(from_frame(one_each), n_boot=0)


def test_budgets_whose_best_is_at_the_edge_are_named():
    t = from_frame(frontier_table(edge=True))
    doc = frontier_law.analyse(t, n_boot=30)
    assert any("2 of 4 budgets have their best run at the edge" in w for w in doc["warnings"])
    assert [p["bracketed"] for p in doc["points"]] == [False, False, True, True]


def test_counting_conventions_change_c_and_are_named():
    df = frontier_table(n_total=True)
    t = from_frame(df, count="6N_total_D")
    assert np.allclose(t.df["C"], 6 * (t.df["N"] + 4096) * t.df["D"]) and t.frontier_count == "6N_total_D"
    assert np.allclose(t.df["C_6ND"], 6 * t.df["N"] * t.df["D"])
    default = from_frame(df)
    assert default.count == "6ND" and default.frontier_count == "6N_total_D"  # N_total is there
    assert from_frame(df.drop(columns="N_total")).frontier_count == "6ND"
    with pytest.raises(TableError, match="--count 6N_total_D needs a column N_total"):
        from_frame(df.drop(columns="N_total"), count="6N_total_D")
    with pytest.raises(TableError, match="--count hardware needs a column flops_hardware"):
        from_frame(df, count="hardware")
    with pytest.raises(TableError, match="allowed: 6ND, 6N_total_D, hardware"):
        from_frame(df, count="6N")


def test_hardware_flops_of_our_runs_add_attention_and_the_output_layer():
    t = load("results/reference", count="hardware")
    raw = pd.read_parquet("results/reference/runs.parquet")
    row = raw.iloc[0]
    per_token = 6 * row["N"] + 12 * row["n_layers"] * row["seq_len"] * row["d_model"] + 6 * row["vocab"] * row["d_model"]
    assert t.df.loc[t.df["run_id"] == row["run_id"], "C"].item() == pytest.approx(per_token * row["tokens"])


def test_the_report_leads_with_the_frontier_law(tmp_path):
    df = frontier_table(noise=0.005, seeds_at_best=3, n_total=True)
    df.to_csv(tmp_path / "runs.csv", index=False)
    report.build(tmp_path / "runs.csv", n_boot=30)
    text = (tmp_path / "report.md").read_text()
    answer = text.split("## The answer")[1].split("\n## ")[0].strip().splitlines()
    assert answer[0].startswith("- Frontier law (the best loss of each budget, C = 6 N_total D)")
    assert answer[1].startswith("- Held out: the best loss at C = ") and "mean of 3 seeds" in answer[1]
    assert "## Frontier law" in text and "| budget C | best run's C |" in text


def test_backtest_command_holds_out_every_budget_in_turn(tmp_path):
    frontier_table(noise=0.005, seeds_at_best=2, n_total=True).to_csv(tmp_path / "runs.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "backtest", str(tmp_path / "runs.csv"), "--n-boot", "20"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "| 3 | 2 budgets |" in r.stdout and "| 4 | 3 budgets |" in r.stdout
    assert "| error, C = 6ND | error, C = 6N_total_D |\n" in r.stdout  # the counts the table allows
    cells = backtests.cell_backtests(from_frame(frontier_table(noise=0.005)), n_boot=20)
    assert set(cells["held_out"]) == {3, 4}


def test_a_law_from_two_budgets_assumes_the_drift_and_says_so():
    t = from_frame(frontier_table(budgets=(1e11, 10 ** 11.5, 1e12)))
    check = frontier_law.check(t, n_boot=30)
    law = check["law"]
    assert law["drift_assumed"] and law["drift_per_decade"] == frontier_law.ASSUMED_DRIFT and not law["backtests"]
    row = check["rows"][0]
    assert row["predicted_high"] / row["predicted_low"] > np.exp(2 * 1.8 * 0.5 * frontier_law.ASSUMED_DRIFT)
    assert "assumed: two budgets cannot backtest themselves" in "\n".join(frontier_law.section(law))
    three = frontier_law.fit(t, n_boot=0)
    assert not three.drift_assumed and len(three.backtests) == 1
