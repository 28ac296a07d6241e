"""Sweeps: every shipped sweep file composes; end to end through real Hydra launchers (basic and joblib); kill -9
and relaunch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

TINY = ["model.seq_len=32", "train.batch_size=8", "train.steps_per_dispatch=4", "train.n_evals=4",
        "data.eval_windows=32", "train.progress=log"]


def write_sweep(tmp_path: Path, name: str, steps: list[int], launcher: str = "basic") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nn_boot: 20\noverrides: [launcher={launcher}, {', '.join(TINY)}]\n"
        f"grids:\n  - model: [s01, s02]\n    train.steps: [{', '.join(map(str, steps))}]\n")
    return path


def scaling(*args, tmp_path, **kw):
    env = os.environ.copy()
    return subprocess.run([sys.executable, "-m", "scaling.cli", *args, f"results_dir={tmp_path / 'results'}",
                           f"data.cache_dir={os.environ['SCALING_CACHE']}"], check=False, capture_output=True, text=True,
                          env=env, **kw)


def test_every_shipped_sweep_file_composes_into_valid_cells(tmp_path):
    from scaling import sweep_file, sweep_plan

    files = sorted((Path(__file__).parents[1] / "sweeps").glob("*.yaml"))
    assert {"quick.yaml", "emergence.yaml", "heads.yaml"} <= {p.name for p in files}
    for p in files:
        rows = sweep_plan.plan(sweep_file.load_sweep(p), [f"results_dir={tmp_path}"])
        assert rows and all(r.status == "new" and r.N > 0 and r.steps > 0 for r in rows), p.name
        if p.name == "heads.yaml":  # each size against its own 16-wide head count
            assert sorted((r.model, r.cfg.model.n_heads) for r in rows) == [
                ("s06", 4), ("s06", 6), ("s08", 4), ("s08", 8)]


def test_the_runs_table_tells_the_optimizer_settings_of_a_sweep_apart(tmp_path):
    # sweeps/optimizer_checks.yaml runs the main job under four (b2, min_lr_frac) settings: the table must say
    # which run had which, from each run's own config
    from omegaconf import OmegaConf

    from scaling import collect, runs, sweep_file, sweep_plan

    rows = sweep_plan.plan(sweep_file.load_sweep(Path(__file__).parents[1] / "sweeps" / "optimizer_checks.yaml"),
                           [f"results_dir={tmp_path}"])
    for r in rows:
        folder = runs.run_dir(r.cfg)
        folder.mkdir(parents=True)
        OmegaConf.save(r.cfg, folder / runs.CONFIG)
        runs.write_summary(folder, {"status": "completed", "N": r.N, "length_source": "train.flops"})
    table, _, _ = collect.collect(runs.sweep_dir(rows[0].cfg))
    assert len(table) == 119 and table["run_id"].is_unique
    assert table.groupby(["b2", "min_lr_frac"]).size().to_dict() == {
        (0.95, 0.0): 26, (0.95, 0.1): 26, (0.999, 0.0): 41, (0.999, 0.1): 26}
    assert set(table["target_flops"]) == {7.9e10, 2.5e11, 7.9e11, 2.5e12, 7.9e12}
    assert set(table["weight_decay"]) == {0.1} and set(table["b1"]) == {0.9}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_tiny_sweep_runs_collects_and_relaunches_in_seconds(tmp_path, cache_dir, launcher):
    sweep = write_sweep(tmp_path, f"tiny_{launcher}", [16, 32], launcher)
    r = scaling("sweep", str(sweep), tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = tmp_path / "results" / f"tiny_{launcher}"
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    assert set(runs["steps"]) == {16, 32} and runs["run_id"].is_unique
    curves = pd.read_parquet(results / "curves.parquet")
    assert set(curves["run_id"]) == set(runs["run_id"])
    assert (results / "report.md").exists() and (results / "fit.json").exists()
    if launcher == "joblib":
        assert "pinned to cores" in (results / "sweep.log").read_text()  # library notices go to the log
    t0 = time.time()
    again = scaling("sweep", str(sweep), tmp_path=tmp_path)
    assert again.returncode == 0 and "4 already completed, 0 to run" in again.stdout
    assert time.time() - t0 < 60
    assert (pd.read_csv(results / "runs.csv")["wall_s"] == runs["wall_s"]).all()


@pytest.mark.slow
def test_kill_minus_9_then_relaunch_resumes(tmp_path, cache_dir):
    sweep = write_sweep(tmp_path, "killed", [200])
    results = tmp_path / "results" / "killed"
    cmd = [sys.executable, "-m", "scaling.cli", "sweep", str(sweep), f"results_dir={tmp_path / 'results'}",
           f"data.cache_dir={os.environ['SCALING_CACHE']}", "train.checkpoint_every_steps=8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait for one finished run and a checkpoint in the next one
            summaries = [json.loads(p.read_text()) for p in results.glob("*/summary.json")]
            done = [s for s in summaries if s["status"] == "completed"]
            ckpts = [p for p in results.glob("*/ckpt/*") if p.name.isdigit()]
            if done and any(s["status"] == "running" for s in summaries) and \
                    any(c.parent.parent.name != d["run_id"] for c in ckpts for d in done):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never reached a completed run plus a checkpointed running one")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {s["run_id"]: s["wall_s"] for s in done}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 2 and set(runs["status"]) == {"completed"}
    for run_id, wall in finished.items():  # never retrained
        assert runs.set_index("run_id").loc[run_id, "wall_s"] == wall
    resumed = runs[~runs["run_id"].isin(finished)]
    assert resumed["resumed_from_step"].iloc[0] >= 8


def test_progress_line_counts_finished_runs_and_reads_the_running_step(tmp_path, cache_dir):
    from scaling import progress, runs, sweep_file, sweep_plan

    spec = sweep_file.load_sweep(write_sweep(tmp_path, "progress", [40]))
    rows = sweep_plan.plan(spec, [f"results_dir={tmp_path / 'results'}", *TINY])
    done, running = (runs.run_dir(r.cfg) for r in rows)
    for folder, status in ((done, "completed"), (running, "running")):
        folder.mkdir(parents=True)
        runs.write_json_atomic(folder / "summary.json", {"status": status})
    runs.write_json_atomic(running / "progress.json", {"step": 20})
    line = progress.SweepProgress(rows).report()
    assert line.startswith("[sweep] 1/2 runs done") and "50%" in line and "ETA" in line, line
