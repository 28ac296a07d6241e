"""What the data do not determine is reported as not identified, never as an estimate; thin fits warn; a frontier
of fewer than 4 points is refused."""

import numpy as np
import pandas as pd
import pytest

from analysis import isoflop, report, report_text
from analysis.fit import Fit, judge
from analysis.table import from_frame


def fit_with(params: dict, n_points: int = 30) -> Fit:
    return Fit(form="chinchilla", formula="", n_points=n_points, samples={"alpha": np.zeros(3)},
               params={k: {"value": v, "ci_low": lo, "ci_high": hi} for k, (v, lo, hi) in params.items()})


def test_zero_width_runaway_exponents_and_what_rests_on_them_are_not_identified():
    f = judge(fit_with({"E": (1.7, 1.6, 1.8), "A": (400.0, 300.0, 500.0), "alpha": (0.34, 0.3, 0.4),
                        "B": (400.0, 400.0, 400.0), "beta": (0.28, 0.2, 47.9), "a": (0.45, 0.4, 0.5)}), 5)
    assert set(f.not_identified) == {"B", "beta", "a"}
    assert "zero width" in f.not_identified["B"] and "beyond 5" in f.not_identified["beta"]
    assert "depends on beta" in f.not_identified["a"]
    assert not any("free parameters" in w for w in f.warnings)
    clean = judge(fit_with({"E": (1.7, 1.6, 1.8), "alpha": (0.34, 0.3, 0.4)}), 5)
    assert clean.not_identified == {}
    scales = judge(fit_with({"E": (1.7, 1e-9, 1.8)}), 5)
    assert "orders of magnitude" in scales.not_identified["E"]


def test_a_fit_with_fewer_than_three_points_per_parameter_warns():
    f = judge(fit_with({"alpha": (0.34, 0.3, 0.4)}, n_points=12), 5)
    assert any("12 points for 5 free parameters" in w for w in f.warnings)


def test_the_report_prints_not_identified_instead_of_a_value(tmp_path):
    rng = np.random.default_rng(0)
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, 5), np.geomspace(1e8, 1e11, 5))
    N, D = N.ravel(), D.ravel()
    loss = 2.0 + 3e3 / D ** 0.4 + 1e-3 * rng.standard_normal(len(N))  # no N term at all: alpha is free
    t = from_frame(pd.DataFrame({"N": N, "D": D, "loss": loss}))
    result = report.fit_all(t, n_boot=30)
    chin = result.forms["chinchilla"]
    assert "alpha" in chin.not_identified or "A" in chin.not_identified, chin.params
    doc = report_text.markdown(result, [], tmp_path)
    assert all(f"| {name} | not identified |" in doc for name in chin.not_identified)
    assert "not ident." in report_text.format_tables(result)


def test_a_frontier_of_three_points_is_refused():
    t = from_frame(pd.DataFrame({"N": [1e6, 2e6, 4e6], "D": [1e9, 2e9, 4e9], "loss": [3.0, 2.8, 2.6]}))
    with pytest.raises(ValueError, match="3 point.*at least 4 points"):
        isoflop.approach1(t, n_boot=10)
