"""The floors of the house: the planning layer and `scaling plan` never import JAX; analysis/ imports neither JAX
nor the training package; training never imports matplotlib or scipy."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _without(code: str, *modules: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter and check that none of `modules` was imported by it."""
    probe = (f"{code}\nimport sys\nloaded = sorted({set(modules)!r} & set(sys.modules))\n"
             "assert not loaded, loaded\n")
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False)


def test_analysis_stands_apart_from_the_training_package():
    code = ("import analysis.cli, analysis.report, analysis.emergence_report, analysis.isoflop, analysis.hyperparams\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'scaling'], 'analysis imported scaling'")
    r = _without("import sys\n" + code, "jax")
    assert r.returncode == 0, r.stderr


def test_scaling_plan_runs_without_jax(tmp_path):
    code = ("from scaling import cli\n"
            f"assert cli.main(['plan', 'sweeps/quick.yaml', 'results_dir={tmp_path}']) == 0\n")
    r = _without(code, "jax")
    assert r.returncode == 0, r.stderr
    assert "sweep quick: 18 cells" in r.stdout and "total: C" in r.stdout


def test_the_pure_floor_imports_no_jax():
    modules = "config, sizes, plan, packing, branching, runs, summary, sweep_file, sweep_plan, progress, collect"
    r = _without(f"from scaling import {modules}", "jax")
    assert r.returncode == 0, r.stderr


def test_training_never_imports_matplotlib():
    """`scaling train` and a sweep's workers load JAX, not the plotting and fitting stack of analysis/."""
    r = _without("from scaling import cli, train, engine, app", "matplotlib", "scipy")
    assert r.returncode == 0, r.stderr
