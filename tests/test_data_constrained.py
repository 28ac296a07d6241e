"""The data-constrained law as Muennighoff et al. (2023) published it: effective data (R*_D) and effective
parameters (R*_N), fitted in two stages, recovered from runs drawn from their fitted law; the one-R* form stays an
option; the unique-token column is named with --unique-tokens."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import data_constrained, report
from analysis.table import from_frame, load

# Their fitted values (Muennighoff et al. 2023, eq. 5 and appendix): a shared exponent alpha = beta
PUBLISHED = {"E": 1.87, "A": 521.0, "B": 1488.0, "alpha": 0.353, "R_star_D": 15.387, "R_star_N": 5.309}


def published_law(N, D, U):
    p = PUBLISHED
    u_n = np.minimum(N, U * (p["A"] / p["B"]) ** (1 / p["alpha"]))  # the compute-optimal N for U tokens
    n_eff = u_n + u_n * p["R_star_N"] * (1 - np.exp(-(N / u_n - 1) / p["R_star_N"]))
    d_eff = U + U * p["R_star_D"] * (1 - np.exp(-(D / U - 1) / p["R_star_D"]))
    return p["E"] + p["A"] / n_eff ** p["alpha"] + p["B"] / d_eff ** p["alpha"]


def runs(noise: float, seed: int = 0) -> pd.DataFrame:
    """Single-epoch runs over a grid of N and D, and runs repeating 3 unique-token budgets 2 to 59 times."""
    rows = [{"N": n, "D": d, "U": d} for n in np.geomspace(1e7, 3e9, 8) for d in np.geomspace(1e9, 1e11, 6)]
    rows += [{"N": n, "D": u * e, "U": u} for u in (1e8, 1e9, 4e9) for e in (2, 4, 8, 16, 32, 59)
             for n in (1e8, 5e8, 2e9)]
    df = pd.DataFrame(rows)
    df["loss"] = published_law(df["N"], df["D"], df["U"]) * np.exp(np.random.default_rng(seed).normal(0, noise, len(df)))
    return df


def test_two_stages_recover_the_published_law_exactly():
    fit = data_constrained.muennighoff(from_frame(runs(noise=0.0)), n_boot=0)
    for k, v in PUBLISHED.items():
        assert fit.value(k) == pytest.approx(v, rel=1e-3), k


def test_both_decay_scales_are_recovered_under_noise():
    # 0.2% noise in loss: R*_D within 5% and inside its interval, R*_N within 15% (its estimate inherits the
    # stage-1 error, and the percentile interval does not correct that bias)
    fit = data_constrained.muennighoff(from_frame(runs(noise=0.002)), n_boot=30)
    assert fit.value("R_star_D") == pytest.approx(PUBLISHED["R_star_D"], rel=0.05)
    assert fit.params["R_star_D"]["ci_low"] <= PUBLISHED["R_star_D"] <= fit.params["R_star_D"]["ci_high"]
    assert fit.value("R_star_N") == pytest.approx(PUBLISHED["R_star_N"], rel=0.15)


def test_the_one_rstar_form_is_an_option_and_differs():
    t = from_frame(runs(noise=0.0))
    forms, _, _ = report._fit_forms(t, n_boot=0, seed=0, method="fast", data_law="one-rstar")
    assert "muennighoff_one_rstar" in forms and "muennighoff" not in forms
    assert "R_star" in forms["muennighoff_one_rstar"].params


def test_unique_tokens_column_is_mapped_from_the_command_line(tmp_path):
    df = runs(noise=0.002).rename(columns={"N": "params", "D": "tokens_seen", "U": "unique"})
    path = tmp_path / "dc.csv"
    df.to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-m", "scaling.cli", "fit", str(path), "--n", "params", "--d", "tokens_seen",
                          "--unique-tokens", "unique", "--n-boot", "0", "--json"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    params = json.loads(out.stdout)["forms"]["muennighoff"]["params"]
    assert params["R_star_D"]["value"] == pytest.approx(PUBLISHED["R_star_D"], rel=0.15)
    assert params["R_star_N"]["value"] == pytest.approx(PUBLISHED["R_star_N"], rel=0.3)
    _, skipped, _ = report._fit_forms(from_frame(df, n="params", d="tokens_seen"), n_boot=0, seed=0, method="fast")
    assert "--unique-tokens" in skipped["muennighoff"]  # without the column, the report says how to name it


# ---- Muennighoff et al.'s own 182 runs (tests/data/README.md): their stage 2, with their constants pinned ----------

MUENNIGHOFF_RUNS = Path(__file__).parent / "data" / "muennighoff2023_runs.csv"
STAGE1 = {"E": np.exp(0.6254804), "A": np.exp(6.255414), "B": np.exp(7.3049974), "alpha": 0.3526596}
PUBLISHED_RSTAR = {"R_star_D": 15.387756, "R_star_N": 5.309743}
PUBLISHED_OBJECTIVE = 0.0158259


def _their_runs():
    return load(MUENNIGHOFF_RUNS, unique_tokens="U")


def test_their_start_grid_with_their_constants_pinned_returns_their_rstar():
    fit = data_constrained.muennighoff(_their_runs(), n_boot=0, fix=STAGE1, starts="published",
                                       compare=PUBLISHED_RSTAR)
    assert fit.search["runs_in_stage_2"] == 182  # stage 2 on every run, as theirs
    assert abs(fit.value("R_star_D") - 15.39) <= 0.05 and abs(fit.value("R_star_N") - 5.31) <= 0.01
    assert abs(fit.objective - 0.015826) <= 1e-6
    assert abs(fit.search["compared"]["objective"] - PUBLISHED_OBJECTIVE) <= 1e-7  # their point, our objective
    assert {k: fit.value(k) for k in STAGE1} == STAGE1 and fit.pinned == set(STAGE1)


def test_the_default_search_finds_a_lower_minimum_and_says_the_objective_is_flat():
    fit = data_constrained.muennighoff(_their_runs(), n_boot=0, fix=STAGE1, compare=PUBLISHED_RSTAR)
    assert fit.objective < PUBLISHED_OBJECTIVE - 1e-5  # 0.0158047 at R*_D 95.4, R*_N 1.71
    assert fit.value("R_star_D") > 50 and fit.value("R_star_N") < 2.5
    assert len(fit.search["minima"]) >= 2
    flat = [w for w in fit.warnings if "objective is flat" in w]
    assert flat and "R_star_D 15.4 to 95.4" in flat[0]
    lines = data_constrained.search_lines(fit)
    assert any(line.startswith("objective 0.01582594 at the compared point") for line in lines)


def test_fix_and_compare_reach_the_command_line_and_bad_ones_are_one_line(tmp_path):
    table = tmp_path / "repeats.csv"
    runs(noise=0.0).to_csv(table, index=False)
    fix = ",".join(f"{k}={PUBLISHED[k]}" for k in ("E", "A", "B", "alpha"))
    base = [sys.executable, "-m", "scaling.cli", "fit", str(table), "--unique-tokens", "U", "--n-boot", "0"]
    out = subprocess.run(base + ["--fix", fix, "--starts", "published", "--compare", "R_star_D=10,R_star_N=10",
                                 "--json"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    form = json.loads(out.stdout)["forms"]["muennighoff"]
    assert form["search"]["fixed"]["alpha"] == PUBLISHED["alpha"] and form["search"]["runs_in_stage_2"] == len(runs(0))
    assert abs(form["params"]["R_star_D"]["value"] - PUBLISHED["R_star_D"]) < 0.05  # drawn from the law: recovered
    assert form["search"]["compared"]["objective"] > form["objective"]
    for bad, says in ((["--fix", "E=1.87,A=521"], "stage 1 as a whole"), (["--fix", "Rstar=2"], "allowed: E, A"),
                      (["--fix", "R_star_D"], "NAME=VALUE"), (["--compare", "R_star_D=x"], "NAME=VALUE"),
                      (["--fix", "R_star_D=15", "--data-law", "one-rstar"], "two-stage")):
        out = subprocess.run(base + bad, capture_output=True, text=True, check=False)
        assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
