"""Nothing lost, whatever happens to a sweep: concurrent launches, signals, kill -9 at random moments, damaged
files, bad input. Each test names the case of the reliability issue it holds."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from interrupt import StopAfter  # tests/interrupt.py

from scaling import collect, config, engine, runs, sweep_file, sweep_plan, train
from scaling.config import ConfigError, with_values

ROOT = Path(__file__).parents[1]
TINY = ["model.seq_len=32", "train.batch_size=8", "train.steps_per_dispatch=4", "train.n_evals=4",
        "data.eval_windows=32", "train.progress=log"]


def write_sweep(tmp_path: Path, name: str, steps: list[int], launcher: str = "basic", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nn_boot: 20\noverrides: [launcher={launcher}, {', '.join(TINY)}{extra}]\n"
                    f"grids:\n  - model: [s01, s02]\n    train.steps: [{', '.join(map(str, steps))}]\n")
    return path


def cli(*args, tmp_path: Path, env: dict | None = None, popen: bool = False, **kw):
    cmd = [sys.executable, "-m", "scaling.cli", *args, f"results_dir={tmp_path / 'results'}",
           f"data.cache_dir={os.environ['SCALING_CACHE']}"]
    env = {**os.environ, **(env or {})}
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True, **kw)
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, **kw)


def wait_for(predicate, timeout: float = 180.0) -> None:
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


def summaries(folder: Path) -> dict[str, dict]:
    return {f.parent.name: json.loads(f.read_text()) for f in folder.glob("*/summary.json")}


def left_running(tmp_path: Path) -> list[str]:
    """Processes still running anything of this test (its results folder is on their command line)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout.splitlines()
    return [line for line in out if str(tmp_path) in line and "ps -eo" not in line]


# ---- 1. two sweeps on one results folder ----------------------------------------------------------------------

@pytest.mark.slow
def test_two_sweeps_on_one_folder_train_each_run_exactly_once(tmp_path, cache_dir):
    sweep = write_sweep(tmp_path, "twice", [40, 80])
    procs = [cli("sweep", str(sweep), tmp_path=tmp_path, popen=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    results = tmp_path / "results" / "twice"
    table = pd.read_csv(results / "runs.csv")
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert table["resumed_from_step"].isna().all()  # nobody resumed another's live checkpoint
    curves = pd.read_parquet(results / "curves.parquet")
    assert not curves.duplicated(["run_id", "step"]).any() and curves.groupby("run_id")["step"].is_monotonic_increasing.all()
    assert not list(results.glob("*/error.txt")) and not list(results.glob("*/lock"))


# ---- 2. signals ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("launcher, how", [("basic", "ctrl-c"), ("joblib", "sigterm to the group")])
def test_a_signalled_sweep_checkpoints_every_run_stops_every_process_and_resumes(tmp_path, cache_dir, launcher,
                                                                               how):
    # 400 steps: the signal comes at the first progress write (step 100, or 5 s), well before the end
    sweep = write_sweep(tmp_path, "sig", [400], launcher, extra=", train.checkpoint_every_steps=40")
    results = tmp_path / "results" / "sig"
    slots = tmp_path / "tmp"
    slots.mkdir()
    p = cli("sweep", str(sweep), tmp_path=tmp_path, popen=True, env={"TMPDIR": str(slots)})
    wanted = 2 if launcher == "joblib" else 1
    wait_for(lambda: len(list(results.glob("*/progress.json"))) >= wanted)
    if how == "ctrl-c":
        p.send_signal(signal.SIGINT)  # a terminal sends it to the foreground group: the sweep alone
    else:
        os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    code = 130 if how == "ctrl-c" else 143
    assert p.returncode == code, err[-3000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("scaling sweep: stopped by SIG"), err
    assert not left_running(tmp_path), left_running(tmp_path)
    assert not list(slots.glob("scaling-slots-*"))  # the workers' core slots are cleaned up
    stopped = {k: s for k, s in summaries(results).items() if s["status"] == "interrupted"}
    assert len(stopped) >= wanted and not any(s["status"] == "running" for s in summaries(results).values())
    for rid, s in stopped.items():
        assert s["final_eval_step"] <= s["steps_done"] and (results / rid / "ckpt").is_dir()
    again = cli("sweep", str(sweep), tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    table = pd.read_csv(results / "runs.csv").set_index("run_id")
    assert set(table["status"]) == {"completed"}
    assert (table.loc[list(stopped), "resumed_from_step"] > 0).all()


def test_an_interrupted_train_exits_non_zero(tmp_path, cache_dir):
    p = cli("train", "model=s02", "train.steps=3000", "sweep=one", *TINY, tmp_path=tmp_path, popen=True)
    folder = tmp_path / "results" / "one"
    wait_for(lambda: list(folder.glob("*/progress.json")))
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode == 130
    assert [s["status"] for s in summaries(folder).values()] == ["interrupted"]


# ---- 3 and 4. damaged run folders ----------------------------------------------------------------------------

def test_a_run_killed_between_its_final_checkpoint_and_its_summary_is_finalised(make_cfg):
    cfg = make_cfg("train.steps=24")
    done = train.run(cfg)
    folder = runs.run_dir(cfg)
    for damage in ("missing", "truncated", "failed", "no final row"):
        summary = folder / "summary.json"
        if damage == "missing":
            summary.unlink()
        elif damage == "truncated":
            summary.write_text(summary.read_text()[:40])
        elif damage == "failed":
            runs.write_summary(folder, {**done, "status": "failed", "error": "StepAlreadyExistsError"})
        else:  # the last metrics row lost too: the final evaluation is computed again from the checkpoint
            summary.unlink()
            rows, _ = runs.read_metrics(folder)
            runs.write_metrics(folder, rows[:-1])
        again = train.run(with_values(cfg, rerun_failed=True) if damage == "failed" else cfg)
        assert again["status"] == "completed" and again["steps_done"] == 24, damage
        assert again["final_eval_loss"] == done["final_eval_loss"], damage


def test_a_damaged_metrics_line_loses_that_line_only(make_cfg, monkeypatch):
    base = ["train.steps=40", "train.n_evals=8", "train.checkpoint_every_steps=4"]
    cfg = make_cfg(*base, "sweep=straight")
    train.run(cfg)
    straight = runs.read_metrics(runs.run_dir(cfg))[0]
    broken = make_cfg(*base, "sweep=broken")
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(6))
        assert train.run(broken)["status"] == "interrupted"
    folder = runs.run_dir(broken)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 4
    lines[1] = lines[1][: len(lines[1]) // 2]  # a torn line in the middle
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    resumed = train.run(broken)
    rows, damaged = runs.read_metrics(folder)
    assert resumed["status"] == "completed" and resumed["metrics_damaged_lines"] == [2] and not damaged
    assert [r["step"] for r in rows] == [r["step"] for r in straight if r["step"] != straight[1]["step"]]
    assert rows[-1]["eval_loss"] == straight[-1]["eval_loss"]


# ---- 5 and 6. sweep files, folders that cannot be written, --help -----------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("name: x\noverides: [launcher=basic]\ngrids:\n  - model: [s01]\n",
     "unknown key 'overides' (did you mean 'overrides'?); allowed: name, n_boot, overrides, grids"),
    ("name: x\ngrids:\n  - model: [s01\n    train.steps: [3]\n", "not valid YAML at line 4"),
    ("name: x\nn_boot: many\ngrids:\n  - model: [s01]\n", "n_boot must be a positive integer, got 'many'"),
    ("name: x\npack: 3\ngrids:\n  - model: [s01]\n", "pack must be true or false, got 3"),
])
def test_sweep_files_are_checked_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep_file.load_sweep(path)
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "plan", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("grid, message", [
    ("train.stpes: [3]", "Could not override 'train.stpes'. There is no such config key"),
    ("model: [s99]", "Could not find 'model/s99'; allowed: s01, s01a, s01b, s02"),
    ("train.steps: [abc]", "Value 'abc' of type 'str' could not be converted to Integer"),
])
def test_bad_grid_keys_and_values_are_one_line(tmp_path, grid, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\ngrids:\n  - {grid}\n")
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "plan", str(path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_a_results_folder_that_cannot_be_written_is_one_line_and_help_exits_zero(tmp_path, cache_dir):
    (tmp_path / "a_file").write_text("")
    bad = f"results_dir={tmp_path / 'a_file' / 'results'}"
    sweep = write_sweep(tmp_path, "ro", [8])
    for args in (["sweep", str(sweep), bad], ["train", "model=s01", "train.steps=4", bad]):
        r = subprocess.run([sys.executable, "-m", "scaling.cli", *args], capture_output=True, text=True, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "cannot write results into" in r.stderr and "Not a directory" in r.stderr
    for command in ("sweep", "plan"):
        r = subprocess.run([sys.executable, "-m", "scaling.cli", command, "--help"], capture_output=True, text=True, check=False)
        assert r.returncode == 0 and "usage: scaling" in r.stdout


# ---- 7. corpora ------------------------------------------------------------------------------------------------

def test_a_single_text_file_trains_and_binary_files_are_refused_unless_asked(make_cfg, tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(3000)))
    s = train.run(make_cfg(f"data.corpus={text}", "sweep=one_file", "train.steps=8"))
    assert s["status"] == "completed" and s["corpus"]["train_files"] == 1 and s["corpus"]["val_files"] == 1
    binary = tmp_path / "blobs"
    binary.mkdir()
    rng = random.Random(0)
    for i in range(30):
        (binary / f"b{i}.dat").write_bytes(bytes(rng.randrange(256) for _ in range(4000)))  # .bin: token shards
    with pytest.raises(ConfigError, match=r"of its bytes are not text .*set data.binary=true"):
        train.run(make_cfg(f"data.corpus={binary}", "sweep=blobs", "train.steps=8"))
    s = train.run(make_cfg(f"data.corpus={binary}", "data.binary=true", "sweep=blobs", "train.steps=8"))
    assert s["status"] == "completed"


# ---- 8. relaunching a sweep with a diverged run ------------------------------------------------------------------

@pytest.mark.slow
def test_relaunching_a_finished_sweep_with_a_diverged_run_trains_and_rebuilds_nothing(tmp_path, cache_dir):
    sweep = tmp_path / "div.yaml"
    sweep.write_text(f"name: div\nn_boot: 20\noverrides: [launcher=basic, {', '.join(TINY)}, optim.warmup_frac=0]\n"
                     "grids:\n  - model: [s01]\n    train.steps: [16]\n    optim.lr: [0.003, 1000]\n")
    first = cli("sweep", str(sweep), tmp_path=tmp_path)
    assert set(pd.read_csv(tmp_path / "results" / "div" / "runs.csv")["status"]) == {"completed", "diverged"}
    again = cli("sweep", str(sweep), tmp_path=tmp_path)
    assert again.returncode == 0 and "2 already completed, 0 to run" in again.stdout, first.stderr[-2000:]
    assert "scaling.app -m" not in again.stdout and "nothing trained" in again.stdout


# ---- 9. run identity ------------------------------------------------------------------------------------------

def test_run_ids_survive_a_new_field_at_its_default_and_follow_the_results_version(make_cfg, monkeypatch, tmp_path):
    reference = set(pd.read_csv(ROOT / "results" / "reference" / "runs.csv")["run_id"])
    planned = sweep_plan.plan(sweep_file.load_sweep(ROOT / "sweeps" / "quick.yaml"), [])
    assert {runs.run_id(r.cfg) for r in planned} == reference  # published ids stand
    cfg = make_cfg()
    before = runs.run_id(cfg)
    real = config.defaults
    monkeypatch.setattr(config, "defaults", lambda: {**real(), "train.new_knob": 3})
    assert runs.run_id(with_values(cfg, **{"train.new_knob": 3})) == before  # a field added at its default
    assert runs.run_id(with_values(cfg, **{"train.new_knob": 4})) != before
    monkeypatch.setattr(config, "RESULTS_VERSION", config.RESULTS_VERSION + 1)
    assert runs.run_id(cfg) != before  # a code change that alters results: the run is trained again
    for i, version in enumerate((None, 2)):
        folder = tmp_path / "mixed" / f"run{i}"
        folder.mkdir(parents=True)
        runs.write_summary(folder, {"status": "completed", "N": 10, **({"results_version": version} if version else {})})
    _, _, problems = collect.collect(tmp_path / "mixed")
    assert any("mixes runs of results versions [1, 2]" in p for p in problems)


# ---- kill -9 at random moments --------------------------------------------------------------------------------

def kill_trials(tmp_path: Path, trials: int, seed: int = 0, steps: int = 160, kills_per_trial: int = 3) -> dict:
    """Train the same tiny run `trials` times, each killed with SIGKILL at up to `kills_per_trial` random moments
    (start-up, compilation, training, checkpoint and summary writes: a launch takes about 15 s) and relaunched,
    then finished; compare each with an uninterrupted run. Returns the figures."""
    args = ["model=s01", f"train.steps={steps}", "train.checkpoint_every_steps=8", *TINY]
    straight = cli("train", *args, "sweep=straight", tmp_path=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    want = runs.read_metrics(next((tmp_path / "results" / "straight").glob("*/metrics.jsonl")).parent)[0]
    rng, kills, lost, differ = random.Random(seed), 0, 0, 0
    for t in range(trials):
        for attempt in range(kills_per_trial + 1):
            p = cli("train", *args, f"sweep=trial{t}", tmp_path=tmp_path, popen=True)
            try:
                p.wait(timeout=rng.uniform(2.0, 16.0) if attempt < kills_per_trial else 600)
                break
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                kills += 1
        folder = next((tmp_path / "results" / f"trial{t}").glob("*/summary.json")).parent
        s = json.loads((folder / "summary.json").read_text())
        lost += s["status"] != "completed"
        differ += _strip(runs.read_metrics(folder)[0]) != _strip(want)  # every logged number, bitwise
    return {"trials": trials, "kills": kills, "lost": lost, "non_bitwise": differ}


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


@pytest.mark.slow
def test_kill_minus_9_at_random_moments_loses_nothing_and_resumes_bitwise(tmp_path, cache_dir):
    figures = kill_trials(tmp_path, trials=3)
    print(figures)
    assert figures["kills"] >= 2 and figures["lost"] == 0 and figures["non_bitwise"] == 0, figures

