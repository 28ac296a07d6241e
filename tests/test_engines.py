"""Sweeps through real cluster engines: a one-node Slurm (submitit launcher) and a Ray head (ray launcher).

Each tier starts its engine on 127.0.0.1 under a temp folder (tests/clusters.py) and stops it by PID. A tier whose
engine is not installed is skipped with the reason; CI installs both (.ci/run).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import clusters  # tests/clusters.py
import pandas as pd
import pytest

TINY = ["model.seq_len=32", "train.batch_size=8", "train.steps_per_dispatch=4", "train.n_evals=4",
        "data.eval_windows=32", "train.progress=log"]
LONG = 1600  # steps of the cell the Slurm test kills soon after its first checkpoint (step 200)


def write_sweep(tmp_path: Path, name: str, launcher: str, long_steps: int | None = None) -> Path:
    """Four short cells, and optionally one long cell in a second grid (launched after the first grid)."""
    text = (f"name: {name}\nn_boot: 20\noverrides: [launcher={launcher}, {', '.join(TINY)}]\n"
            "grids:\n  - model: [s01, s02]\n    train.steps: [16, 32]\n")
    if long_steps:
        text += f"  - model: [s01]\n    train.steps: [{long_steps}]\n    train.checkpoint_every_steps: [200]\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def sweep_cmd(sweep: Path, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "scaling.cli", "sweep", str(sweep), f"results_dir={tmp_path / 'results'}",
            f"data.cache_dir={os.environ['SCALING_CACHE']}"]


def _engine(start, folder: Path):
    """Yield the environment of an engine started by `start(folder)`; skip (fail under CI) if it cannot start."""
    try:
        with start(folder) as env:
            yield env
    except clusters.Unavailable as e:
        _unavailable(str(e))


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """One cluster for the module's Slurm tests (each sweep has its own name and results folder)."""
    yield from _engine(clusters.slurm, tmp_path_factory.mktemp("slurm"))


@pytest.fixture
def ray_env(tmp_path):
    yield from _engine(clusters.ray_head, tmp_path / "ray")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":  # CI installs every engine: a tier that cannot start is a failure there
        pytest.fail(reason)
    pytest.skip(reason)


def _squeue(env) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], check=False, capture_output=True, text=True, env=env).stdout
    return out.split()


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_sweep_survives_a_killed_job_and_resumes_it(tmp_path, cache_dir, slurm_env):
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        _unavailable("Slurm tier needs hydra-submitit-launcher: pip install 'scaling[slurm]'")
    sweep = write_sweep(tmp_path, "on_slurm", "slurm", long_steps=LONG)
    results = tmp_path / "results" / "on_slurm"
    proc = subprocess.Popen(sweep_cmd(sweep, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=slurm_env, start_new_session=True)
    try:
        # wait for the long cell to be running with a checkpoint, then kill its Slurm job outright (SIGKILL to the batch script; srun
        # then stops the step with SIGTERM, so the run may get to checkpoint and say 'interrupted')
        deadline, killed = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None:
            summaries = [s for s in map(_summary, results.glob("*/summary.json")) if s]
            long = [s for s in summaries if s["steps"] == LONG and s["status"] == "running"]
            has_ckpt = long and any(p.name.isdigit() for p in (results / long[0]["run_id"] / "ckpt").glob("*"))
            jobs = _squeue(slurm_env)
            if has_ckpt and jobs:
                killed = max(jobs, key=lambda j: int(j.split("_")[0]))  # the second grid's job: the long cell
                subprocess.run(["scancel", "--signal=KILL", "--full", killed], check=True, env=slurm_env)
                break
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert killed, f"the long cell never reached a checkpoint under Slurm\n{out[-4000:]}"
    assert proc.returncode != 0, "a sweep with a killed job must not report success\n" + out[-6000:]
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 5, out[-4000:]  # the killed run is in the table, with the status it last wrote
    assert (runs["status"] == "completed").sum() == 4 and set(runs["status"]) <= {"completed", "running", "interrupted"}
    walls = runs.set_index("run_id")["wall_s"]

    again = subprocess.run(sweep_cmd(sweep, tmp_path), check=False, capture_output=True, text=True, env=slurm_env,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "4 already completed, 1 to run" in again.stdout
    runs = pd.read_csv(results / "runs.csv").set_index("run_id")
    assert len(runs) == 5 and set(runs["status"]) == {"completed"}
    resumed = runs[runs["steps"] == LONG].iloc[0]
    assert resumed["resumed_from_step"] >= 200
    finished = walls.index[runs.loc[walls.index, "steps"] != LONG]
    assert (runs.loc[finished, "wall_s"] == walls[finished]).all()  # no finished run retrained


@pytest.mark.slow
@pytest.mark.ray
def test_ray_sweep_runs_collects_and_relaunches(tmp_path, cache_dir, ray_env):
    sweep = write_sweep(tmp_path, "on_ray", "ray")
    r = subprocess.run(sweep_cmd(sweep, tmp_path), check=False, capture_output=True, text=True, env=ray_env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    results = tmp_path / "results" / "on_ray"
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    again = subprocess.run(sweep_cmd(sweep, tmp_path), check=False, capture_output=True, text=True, env=ray_env,
                           timeout=300)
    assert again.returncode == 0 and "4 already completed, 0 to run" in again.stdout


def _summary(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_job_of_two_tasks_trains_one_sharded_run(tmp_path, cache_dir, slurm_env, make_cfg):
    """hydra.launcher.tasks_per_node=2: both tasks join one mesh through jax.distributed (one CPU device each,
    gloo collectives), parameters and Adam state fully sharded; the run equals the one-device run."""
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        _unavailable("Slurm tier needs hydra-submitit-launcher: pip install 'scaling[slurm]'")
    fixed = [*TINY[:-1], "train.progress=none", "train.fsdp=true", "data.unique_tokens=20000"]
    sweep = tmp_path / "two_tasks.yaml"
    sweep.write_text(f"name: two_tasks\nn_boot: 20\noverrides: [launcher=slurm, hydra.launcher.tasks_per_node=2, "
                     f"{', '.join(fixed)}]\ngrids:\n  - model: [s02]\n    train.steps: [40]\n")
    r = subprocess.run(sweep_cmd(sweep, tmp_path), check=False, capture_output=True, text=True, env=slurm_env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    one = make_cfg(*fixed, "model=s02", "train.steps=40", "train.devices=1", f"results_dir={tmp_path / 'one'}")
    from scaling import runs, train

    reference = train.run(one)
    s = _summary(tmp_path / "results" / "two_tasks" / reference["run_id"] / "summary.json")
    assert s is not None and s["status"] == "completed", r.stdout[-4000:]
    assert s["processes"] == 2 and s["devices"] == 2 and s["fsdp"]
    rows = [json.loads(x) for x in (tmp_path / "results" / "two_tasks" / reference["run_id"] / "metrics.jsonl")
            .read_text().splitlines()]
    ref = runs.read_metrics(runs.run_dir(one))[0]
    assert [x["step"] for x in rows] == [x["step"] for x in ref]
    for a, b in zip(rows, ref):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5, abs=0)
