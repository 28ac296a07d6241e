"""The learning-rate rule: the optimum per size from a scan, refused when the scan does not bracket it."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import hyperparams


def scan(true_opt: dict, lrs=(1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2)) -> pd.DataFrame:
    rows = [{"N": n, "lr": lr, "loss": 2.0 + 0.1 * np.log(lr / opt) ** 2, "status": "completed"}
            for n, opt in true_opt.items() for lr in lrs]
    return pd.DataFrame(rows)


def test_optima_and_the_power_law_are_recovered():
    truth = {n: 0.3 * n ** -0.25 for n in (1e4, 3e4, 1e5, 3e5)}
    opt = hyperparams.optima(scan(truth))
    np.testing.assert_allclose(opt["lr_opt"], list(truth.values()), rtol=1e-6)
    r = hyperparams.rule(opt, n_boot=50)
    assert r["p"] == pytest.approx(0.25, abs=1e-6) and r["c"] == pytest.approx(0.3, rel=1e-6)


def test_an_optimum_at_the_edge_of_the_scan_is_not_reported():
    df = scan({1e4: 0.2, 3e4: 5e-3})  # 0.2 lies beyond the largest scanned rate
    df.loc[(df["N"] == 3e4) & (df["lr"] == 8e-2), "status"] = "diverged"
    opt = hyperparams.optima(df).set_index("N")
    assert np.isnan(opt.loc[1e4, "lr_opt"]) and opt.loc[1e4, "best_scanned"] == 8e-2
    assert opt.loc[3e4, "lr_opt"] == pytest.approx(5e-3)
    with pytest.raises(ValueError, match="3 or more sizes"):
        hyperparams.rule(hyperparams.optima(df))


def test_command_line_prints_the_rule_and_names_missing_columns(tmp_path):
    scan({n: 0.3 * n ** -0.25 for n in (1e4, 3e4, 1e5)}).to_csv(tmp_path / "runs.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "analysis.hyperparams", str(tmp_path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "lr_opt = 0.3 * N^-0.250" in r.stdout, r.stderr
    pd.DataFrame({"N": [1.0], "loss": [2.0]}).to_csv(tmp_path / "runs.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "analysis.hyperparams", str(tmp_path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 2 and "missing lr" in r.stderr


def test_the_horizon_law_is_recovered_from_a_scan_over_run_lengths(tmp_path):
    # Two widths at three lengths each; the truth: lr_opt * d_model * sqrt(2048 / 512) = 40 * steps^-0.5.
    cells = [(n, d, s) for n, d in ((2.5e4, 32), (8.4e4, 48)) for s in (1_000, 4_000, 16_000)]
    rows = []
    for n, d, s in cells:
        opt = 40 * s ** -0.5 / d / 2
        rows += [{"N": n, "d_model": d, "steps": s, "batch_size": 4, "seq_len": 128, "lr": opt * f,
                  "loss": 2.0 + 0.1 * np.log(f) ** 2, "status": "completed"} for f in (0.25, 0.5, 1.3, 2.0)]
    df = pd.DataFrame(rows)
    h = hyperparams.horizon(hyperparams.optima(df), n_boot=50)
    assert h["b"] == pytest.approx(0.5, abs=1e-6) and h["k_1"] == pytest.approx(40, rel=1e-6)
    assert h["steps_at"](0.64) == pytest.approx((40 / 0.64) ** 2)
    with pytest.raises(ValueError, match="3 or more run lengths"):
        hyperparams.horizon(hyperparams.optima(df[df["steps"] < 16_000]))
    df.to_csv(tmp_path / "runs.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "analysis.hyperparams", str(tmp_path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "= 40 * steps^-0.500" in r.stdout, r.stderr
