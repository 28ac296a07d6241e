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
import yaml
from interrupt import StopAfter  # tests/interrupt.py

from scaling import collect, config, engine, runs, sweep_file, sweep_plan, train
from scaling import lock as lock_module
from scaling.config import ConfigError, with_values
from scaling.lock import RunLock

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
    ("name: x\ngrids:\n  - model: []\n    train.steps: [3]\n", "grids[0].model is an empty list, which makes no cell"),
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
    (start-up, compilation, training, checkpoint and summary writes) and relaunched, then finished; compare each with
    an uninterrupted run. The moments are drawn over an uninterrupted launch's own duration with a warm compilation
    cache (5 s to 15 s, by machine and load), so that kills land on every machine. Returns the figures."""
    args = ["model=s01", f"train.steps={steps}", "train.checkpoint_every_steps=8", *TINY]
    straight = cli("train", *args, "sweep=straight", tmp_path=tmp_path)
    start = time.monotonic()
    assert cli("train", *args, "sweep=warm", tmp_path=tmp_path).returncode == 0
    launch = time.monotonic() - start
    assert straight.returncode == 0, straight.stderr[-2000:]
    want = runs.read_metrics(next((tmp_path / "results" / "straight").glob("*/metrics.jsonl")).parent)[0]
    rng, kills, lost, differ = random.Random(seed), 0, 0, 0
    for t in range(trials):
        for attempt in range(kills_per_trial + 1):
            p = cli("train", *args, f"sweep=trial{t}", tmp_path=tmp_path, popen=True)
            try:
                p.wait(timeout=rng.uniform(0.1, 0.9) * launch if attempt < kills_per_trial else 600)
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



# ---- 9. a paused owner, a lost lock (issue 36, item 1) ------------------------------------------------------------

def _lock_owner(folder: Path) -> dict:
    try:
        return json.loads((folder / runs.LOCK).read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_a_paused_owner_keeps_its_lock_and_each_run_trains_once(tmp_path, cache_dir):
    # Sweep A is stopped (SIGSTOP, as Ctrl-Z does) while it holds a run's lock, its heartbeat far older than
    # RunLock.STALE_S; sweep B starts on the same folder. B must wait for A, not take the run over.
    sweep = write_sweep(tmp_path, "paused", [300])
    results = tmp_path / "results" / "paused"
    a = cli("sweep", str(sweep), tmp_path=tmp_path, popen=True)
    wait_for(lambda: any(_lock_owner(f).get("pid") for f in results.glob("*/")) and
             list(results.glob("*/progress.json")))
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        held = next(f for f in results.glob("*/") if _lock_owner(f).get("pid"))
        owner = _lock_owner(held)
        old = time.time() - 10 * RunLock.STALE_S
        os.utime(held / runs.LOCK, (old, old))  # a heartbeat long overdue
        b = cli("sweep", str(sweep), tmp_path=tmp_path, popen=True)
        time.sleep(10)
        assert _lock_owner(held) == owner  # B waits for the live owner
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert [a.returncode, b.returncode] == [0, 0], [o[1][-2000:] for o in outs]
    for folder in (f for f in results.glob("*/") if (f / "summary.json").exists()):
        s = json.loads((folder / "summary.json").read_text())
        steps = [r["step"] for r in runs.read_metrics(folder)[0]]
        assert s["status"] == "completed" and s["resumed_from_step"] is None and len(steps) == len(set(steps))
    curves = pd.read_parquet(results / "curves.parquet")
    assert not curves.duplicated(["run_id", "step"]).any()


def test_an_owner_whose_lock_was_taken_over_stops_and_writes_nothing_more(tmp_path, cache_dir):
    # Another host took the lock over (as it does after STALE_S without a heartbeat): at its next write the old
    # owner must notice, say so in one line and leave the run folder exactly as the new owner keeps it.
    p = cli("train", "model=s02", "train.steps=3000", "sweep=lost", *TINY, tmp_path=tmp_path, popen=True)
    results = tmp_path / "results" / "lost"
    wait_for(lambda: list(results.glob("*/progress.json")) and list(results.glob("*/metrics.jsonl")))
    folder = next(results.glob("*/progress.json")).parent
    theirs = folder / "lock.theirs"
    theirs.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "token": "theirs", "since": time.time()}))
    os.replace(theirs, folder / runs.LOCK)
    snapshot = {name: (folder / name).read_bytes() for name in ("summary.json", "metrics.jsonl", "progress.json")}
    _, err = p.communicate(timeout=120)
    errors = [line for line in err.splitlines() if "[INFO]" not in line]
    assert p.returncode == 1 and len(errors) == 1 and "taken over by elsewhere:4242" in errors[0], err[-3000:]
    assert {name: (folder / name).read_bytes() for name in snapshot} == snapshot
    assert _lock_owner(folder)["token"] == "theirs" and not (folder / "error.txt").exists()


def test_a_live_owner_on_this_host_is_never_taken_over_but_a_reused_pid_is(tmp_path):
    lock = RunLock(tmp_path)
    me = {"host": runs.HOST, "pid": os.getpid(), "start": lock_module._start_time(os.getpid())}
    assert not lock._dead(me, age=1e6)  # alive, however late its heartbeat
    assert lock._dead({**me, "start": me["start"] + 1}, age=0.0)  # the pid now names another process
    assert lock._dead({"host": "elsewhere", "pid": os.getpid()}, age=RunLock.STALE_S + 1)
    assert not lock._dead({"host": "elsewhere", "pid": os.getpid()}, age=1.0)


def test_collect_keeps_one_row_per_run_and_step(make_cfg):
    cfg = make_cfg("train.steps=8")
    train.run(cfg)
    folder = runs.run_dir(cfg)
    rows, _ = runs.read_metrics(folder)
    runs.write_metrics(folder, rows + [{**rows[-1], "eval_loss": 9.9}])  # written twice, as by two owners
    _, curves, problems = collect.collect(folder.parent, write=False)
    assert not curves.duplicated(["run_id", "step"]).any() and len(curves) == len(rows)
    assert curves["eval_loss"].iloc[-1] == 9.9 and any("repeated step" in p for p in problems)


# ---- 10. storage errors (issue 36, item 2) -----------------------------------------------------------------------

def test_a_storage_error_interrupts_the_run_instead_of_failing_it(make_cfg, monkeypatch):
    base = ["train.steps=40", "train.checkpoint_every_steps=8"]
    straight = train.run(make_cfg(*base, "sweep=straight"))
    cfg = make_cfg(*base, "sweep=full")
    saves = []

    def full_disk(*args, **kwargs):  # TensorStore's words for it, as Orbax raises them
        saves.append(1)
        if len(saves) == 3:
            raise ValueError('RESOURCE_EXHAUSTED: Failed writing: "/x/ckpt/24.orbax-checkpoint-tmp/d/1": Failed to '
                             "write 6736 bytes to file 9: No space left on device [os_error_code='28']")
        return real_save(*args, **kwargs)

    real_save = engine.checkpoints.save
    with monkeypatch.context() as m:
        m.setattr(engine.checkpoints, "save", full_disk)
        with pytest.raises(runs.StorageError, match="cannot be written: no space left on device"):
            train.run(cfg)
    folder = runs.run_dir(cfg)
    s = runs.read_summary(folder)
    assert s["status"] == "interrupted" and not (folder / "error.txt").exists()
    resumed = train.run(cfg)  # a plain relaunch, no rerun_failed
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 16
    assert _strip(runs.read_metrics(folder)[0]) == _strip(runs.read_metrics(runs.run_dir(make_cfg(*base, "sweep=straight")))[0])
    assert resumed["final_eval_loss"] == straight["final_eval_loss"]


def test_a_checkpoint_cut_short_is_set_aside_and_the_run_trains_again(make_cfg, monkeypatch, caplog):
    base = ["train.steps=40", "train.checkpoint_every_steps=8"]
    straight = train.run(make_cfg(*base, "sweep=straight"))
    cfg = make_cfg(*base, "sweep=truncated")
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(5))
        assert train.run(cfg)["status"] == "interrupted"
    folder = runs.run_dir(cfg)
    (step,) = [p.name for p in (folder / "ckpt").iterdir()]
    biggest = max((p for p in (folder / "ckpt").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # a truncated checkpoint
    with caplog.at_level("WARNING"):
        s = train.run(cfg)  # resumes in this launch: the damage is found by size, before Orbax reads it
    said = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(said) == 1 and "training from the start" in said[0] and "bytes it was saved with" in said[0], said
    assert s["status"] == "completed" and s["final_eval_loss"] == straight["final_eval_loss"]
    assert (folder / f"ckpt-unreadable-{step}").is_dir()  # kept, not deleted


def test_a_checkpoint_that_does_not_decode_is_set_aside_for_the_next_launch(tmp_path, cache_dir):
    # Damage that keeps every size: Orbax's read fails. That leaves its reader threads half torn down, so the run is
    # left, interrupted, to the next launch in a fresh process, which trains it from the start.
    args = ["model=s01", "train.steps=40", "sweep=rot", "train.checkpoint_every_steps=8", *TINY]
    straight = cli("train", *args[:2], "sweep=rot_straight", *args[3:], tmp_path=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    p = cli("train", *args, tmp_path=tmp_path, popen=True)
    folder = tmp_path / "results" / "rot"
    wait_for(lambda: [c for c in folder.glob("*/ckpt/*") if c.name.isdigit()])
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    run = next(folder.glob("*/ckpt")).parent
    for f in [f for f in (run / "ckpt").rglob("*") if f.is_file() and "/d/" in f.as_posix()]:
        f.write_bytes(bytes(f.stat().st_size))  # every array's bytes zeroed, sizes kept
    first = cli("train", *args, tmp_path=tmp_path)
    errors = [line for line in first.stderr.splitlines() if "[INFO]" not in line]
    assert first.returncode == 1 and len(errors) == 1 and "does not restore" in errors[0], first.stderr[-3000:]
    assert "Traceback" not in first.stderr and json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    step = errors[0].split("checkpoint at step ")[1].split()[0]
    assert (run / f"ckpt-unreadable-{step}" / "restore.log").exists()
    again = cli("train", *args, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    want = runs.read_metrics(next((tmp_path / "results" / "rot_straight").glob("*/summary.json")).parent)[0]
    assert _strip(runs.read_metrics(run)[0]) == _strip(want)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True, check=False)
    if r.returncode:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root under CI: {r.stderr.strip()}")
        pytest.skip(f"a small filesystem needs `mount -t tmpfs` (root): {r.stderr.strip() or 'not permitted'}")


SAVE_ON_A_FULL_DISK = """
import logging, sys
import numpy as np
from flax import nnx
from scaling import checkpoints
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s",
                    force=True)  # as a Hydra job's log: on standard output
class M(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(np.random.default_rng(0).random((400, 1000), np.float32))  # 1.6 MB, incompressible
try:
    checkpoints.save(checkpoints.manager(sys.argv[1]), 1, nnx.state(M()), np.zeros((3, 1)), 1.0)
except Exception as e:
    print("save failed:", type(e).__name__, file=checkpoints.real_stderr())
"""


def test_a_checkpoint_save_that_meets_a_full_disk_prints_no_traceback_on_either_stream(tmp_path):
    # Orbax logs its writer thread's failure, with a traceback, through absl's logger, which a job's log prints on
    # standard output (and a sweep relays to the screen): the run reports that failure in one line of its own
    small = tmp_path / "small"
    _mount_tmpfs(small, "1m")
    try:
        p = subprocess.run([sys.executable, "-c", SAVE_ON_A_FULL_DISK, str(small / "ckpt")], capture_output=True,
                           text=True, check=False, cwd=Path(__file__).parents[1])
        assert p.returncode == 0 and p.stderr.strip() == "save failed: ValueError", p.stderr[-3000:]
        assert "Traceback" not in p.stdout and "[absl][ERROR]" not in p.stdout, p.stdout[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.slow
def test_a_sweep_on_a_full_filesystem_ends_in_one_line_and_resumes_when_there_is_room(tmp_path, cache_dir):
    small = tmp_path / "small"
    _mount_tmpfs(small, "16m")
    try:
        sweep = write_sweep(tmp_path, "full", [600], extra=", train.checkpoint_every_steps=40")
        results = small / "results" / "full"
        p = subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", str(sweep), f"results_dir={small / 'results'}",
                              f"data.cache_dir={cache_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: [c for c in results.glob("*/ckpt/*") if c.name.isdigit()])  # a whole checkpoint saved
        filler = small / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        _, err = p.communicate(timeout=600)
        errors = [line for line in err.splitlines() if "[INFO]" not in line and "[WARNING]" not in line]
        assert p.returncode == 1 and "Traceback" not in err, err[-3000:]
        assert errors[-1].startswith("scaling sweep: ") and "no space left on device" in errors[-1], err
        assert len(errors) <= 2, errors  # the run that met it, and the sweep's last line
        stopped = [s for s in summaries(results).values() if s["status"] != "completed"]
        assert stopped and all(s["status"] in ("interrupted", "running") for s in stopped), stopped
        filler.unlink()  # room again
        again = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(sweep),
                                f"results_dir={small / 'results'}", f"data.cache_dir={cache_dir}"],
                               capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stderr[-3000:]
        straight = cli("sweep", str(sweep), tmp_path=tmp_path)
        assert straight.returncode == 0, straight.stderr[-3000:]
        for folder in (f for f in results.iterdir() if (f / "summary.json").exists()):
            want = runs.read_metrics(tmp_path / "results" / "full" / folder.name)[0]
            assert _strip(runs.read_metrics(folder)[0]) == _strip(want), folder.name
        assert any((json.loads((f / "summary.json").read_text()).get("resumed_from_step") or 0) > 0
                   for f in results.iterdir() if (f / "summary.json").exists())
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# ---- 11. one line, exit 2 (issue 36, items 4 and 5) ---------------------------------------------------------------

@pytest.fixture
def reference_copy(tmp_path) -> Path:
    folder = tmp_path / "ref"
    folder.mkdir()
    for name in ("runs.csv", "runs.parquet", "curves.parquet"):
        (folder / name).write_bytes((ROOT / "results" / "reference" / name).read_bytes())
    return folder


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("command", ["fit", "report", "plot"])
def test_a_damaged_curves_table_is_one_line(reference_copy, capsys, damage, command):
    from analysis import cli as analysis_cli

    curves = reference_copy / "curves.parquet"
    curves.write_bytes(curves.read_bytes()[: 300] if damage == "truncated" else b"")
    assert analysis_cli.main(command, [str(reference_copy), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "curves.parquet: not a readable Parquet file" in err, err
    assert "scaling collect" in err


def test_a_corrupt_runs_parquet_is_named_as_parquet(reference_copy, capsys):
    from analysis import cli as analysis_cli

    (reference_copy / "runs.parquet").write_bytes(b"PAR1 not really")
    assert analysis_cli.main("fit", [str(reference_copy)]) == 2
    err = capsys.readouterr().err
    assert "runs.parquet: not a readable table (a damaged Parquet file" in err and "scaling collect" in err, err
    assert ".csv or .tsv file with a header" not in err, err


@pytest.mark.parametrize("args, message", [
    (["train.stpes=3"], "Could not override 'train.stpes'. There is no such config key"),
    (["model=s99"], "Could not find 'model/s99'; allowed: s01, s01a"),
    (["train.steps=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    (["-m", "model=s01,s99", "train.steps=2"], "Could not find 'model/s99'"),
])
def test_scaling_train_composition_errors_are_one_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "train", *args, f"results_dir={tmp_path}"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_a_path_with_a_comma_and_a_space_trains_from_a_sweep_file(tmp_path, cache_dir):
    corpus = tmp_path / "my data,v2 (it's)"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"f{i}.txt").write_text(f"text number {i} of a small corpus\n" * 300)
    sweep = tmp_path / "odd.yaml"
    sweep.write_text(yaml.safe_dump({"name": "odd", "n_boot": 20, "overrides": ["launcher=basic", *TINY],
                                     "grids": [{"model": ["s01"], "train.steps": [8], "data.corpus": [str(corpus)]}]}))
    r = cli("sweep", str(sweep), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (s,) = summaries(tmp_path / "results" / "odd").values()
    assert s["status"] == "completed" and s["corpus"]["corpus"] == str(corpus)


# ---- 12. one run, one result (issue 36, item 3) ------------------------------------------------------------------

@pytest.mark.slow
def test_a_cell_gives_the_same_numbers_under_the_basic_and_the_joblib_launcher(tmp_path, cache_dir):
    got = {}
    for launcher in ("basic", "joblib"):
        sweep = write_sweep(tmp_path, f"same_{launcher}", [200], launcher=launcher)
        r = cli("sweep", str(sweep), tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        results = tmp_path / "results" / f"same_{launcher}"
        got[launcher] = {f.name: _strip(runs.read_metrics(f)[0]) for f in results.iterdir() if (f / "metrics.jsonl").exists()}
        assert {(s["devices"], s["cpu_threads"]) for s in summaries(results).values()} == {(1, 1)}
    assert len(got["basic"]) == 2 and got["basic"] == got["joblib"]  # every logged number, bitwise


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to run under two thread counts")
def test_a_resume_under_other_numerics_is_refused_in_one_line(tmp_path, cache_dir):
    args = ["model=s02", "train.steps=400", "sweep=numerics", "train.checkpoint_every_steps=8", *TINY]
    p = cli("train", *args, "pin_cpus=false", tmp_path=tmp_path, popen=True)  # every core: 2 threads
    folder = tmp_path / "results" / "numerics"
    wait_for(lambda: [c for c in folder.glob("*/ckpt/*") if c.name.isdigit()])
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    (s,) = summaries(folder).values()
    assert s["status"] == "interrupted" and s["cpu_threads"] == len(os.sched_getaffinity(0))
    pinned = cli("train", *args, tmp_path=tmp_path)  # pinned to one core: one thread
    assert pinned.returncode == 2 and len(pinned.stderr.strip().splitlines()) == 1, pinned.stderr
    assert "started under other numerics" in pinned.stderr and "cpu_threads" in pinned.stderr
    assert next(iter(summaries(folder).values()))["status"] == "interrupted"
    again = cli("train", *args, "pin_cpus=false", tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert next(iter(summaries(folder).values()))["status"] == "completed"
