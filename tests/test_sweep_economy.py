"""Less work per sweep: warmup-stable-decay branching and packed (vmapped) seed / learning-rate variants.

Both write every member as the run it stands for (same run id); these tests hold them to the separate runs.
"""

import json
import shutil

import jax
import pytest
from interrupt import StopAfter  # tests/interrupt.py

from scaling import (
    branching,
    collect,
    engine,
    packing,
    program,
    progress,
    runs,
    sizes,
    sweep,
    sweep_file,
    sweep_plan,
    train,
)
from scaling.config import ConfigError

# Bitwise on CPU; GPU reductions are not deterministic run to run.
EXACT = 0 if jax.default_backend() == "cpu" else 1e-5
BUDGETS = "train.branch_tokens=[2560,5120,7680]"  # 10, 20, 30 steps of 8 x 32 tokens


def _steps(folder):
    return [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_wsd_branches_are_the_separate_wsd_runs(make_cfg, tmp_path):
    cfg = make_cfg("optim=wsd", "train.steps=null", BUDGETS, "sweep=branched")
    summaries = train.run_branches(cfg)
    trunk, branches = branching.plan(cfg)
    assert [s for _, s, _ in branches] == [10, 20, 30]
    assert [f for *_, f in branches] == [8, 16, 24]  # 20% cooldowns
    assert trunk.optim.name == "constant" and trunk.train.steps == 24
    for (b, steps, fork), s in zip(branches, summaries):
        alone = train.run(make_cfg("optim=wsd", "train.steps=null", f"train.tokens={b.train.tokens}",
                                   f"optim.warmup_steps={b.optim.warmup_steps}", "sweep=separate"))
        assert s["run_id"] == alone["run_id"] and s["steps_done"] == steps
        assert s["branch_of"] == runs.trunk_dir(cfg, trunk).name and s["fork_step"] == fork
        assert s["final_eval_loss"] == pytest.approx(alone["final_eval_loss"], rel=EXACT, abs=0)
        # The branch's log is the trunk's up to the fork, then its own cooldown.
        assert set(_steps(runs.run_dir(b) / "../../separate" / alone["run_id"])) <= set(_steps(runs.run_dir(b)))
    table, _, problems = collect.collect(tmp_path / "results" / "branched")
    assert len(table) == 3 and not problems  # the trunk is not a run of the sweep
    again = train.run_branches(cfg)  # relaunch: nothing retrained
    assert [s["wall_s"] for s in again] == [s["wall_s"] for s in summaries]


def test_interrupted_trunk_resumes_and_branches_match(make_cfg, monkeypatch):
    cfg = make_cfg("optim=wsd", "train.steps=null", BUDGETS, "sweep=killed")
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(3))
        with pytest.raises(RuntimeError, match="ended interrupted; its branches were not trained"):
            train.run_branches(cfg)
    # As after a kill -9 before the trunk's first checkpoint: it restarts and passes the saved forks again.
    trunk_dir = runs.trunk_dir(cfg, branching.plan(cfg)[0])
    assert (trunk_dir / "forks" / "8").is_dir()
    shutil.rmtree(trunk_dir / "ckpt")
    resumed = train.run_branches(cfg)
    straight = train.run_branches(make_cfg("optim=wsd", "train.steps=null", BUDGETS, "sweep=straight"))
    assert [s["status"] for s in resumed] == ["completed"] * 3
    for a, b in zip(resumed, straight):
        assert a["final_eval_loss"] == pytest.approx(b["final_eval_loss"], rel=EXACT, abs=0)


def test_packed_runs_match_separate_runs_and_relaunch_packs_only_what_is_left(make_cfg):
    cfg = make_cfg("train.seeds=[0,1]", "optim.lrs=[0.003,0.01]", "sweep=packed")
    summaries = train.run_pack(cfg)
    assert len(summaries) == 4 and {s["status"] for s in summaries} == {"completed"}
    for m, s in zip(packing.members(cfg), summaries):
        alone = train.run(make_cfg(f"train.seed={m.train.seed}", f"optim.lr={m.optim.lr}", "sweep=separate"))
        assert s["run_id"] == alone["run_id"] and (s["seed"], s["lr"]) == (m.train.seed, m.optim.lr)
        # vmapped kernels sum in another order, and the peak rate is a separate factor: equal to rounding.
        assert s["final_eval_loss"] == pytest.approx(alone["final_eval_loss"], rel=1e-5)
        assert _steps(runs.run_dir(m)) == _steps(runs.run_dir(m).parent.parent / "separate" / alone["run_id"])
    assert len({s["final_eval_loss"] for s in summaries}) == 4  # seeds and rates really differ
    (runs.run_dir(packing.members(cfg)[3]) / "summary.json").unlink()
    again = train.run_pack(cfg)
    assert [s["wall_s"] for s in again[:3]] == [s["wall_s"] for s in summaries[:3]]
    assert again[3]["final_eval_loss"] == pytest.approx(summaries[3]["final_eval_loss"], rel=1e-5)


def test_a_diverging_member_leaves_the_others_alone(make_cfg):
    cfg = make_cfg("optim.lrs=[0.003,1000]", "optim.warmup_frac=0", "train.seeds=[0]", "sweep=packed")
    good, bad = train.run_pack(cfg)
    assert bad["status"] == "diverged" and bad["steps_done"] == bad["diverged_at_step"] - 1
    alone = train.run(make_cfg("optim.lr=0.003", "optim.warmup_frac=0", "sweep=separate"))
    assert good["status"] == "completed"
    assert good["final_eval_loss"] == pytest.approx(alone["final_eval_loss"], rel=1e-5)


def test_interrupted_pack_resumes_to_the_same_result(make_cfg, monkeypatch):
    cfg = make_cfg("train.seeds=[0,1]", "sweep=killed")
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(2))
        first = train.run_pack(cfg)
    assert {s["status"] for s in first} == {"interrupted"} and first[0]["steps_done"] < 24
    resumed = train.run_pack(cfg)
    straight = train.run_pack(make_cfg("train.seeds=[0,1]", "sweep=straight"))
    for a, b in zip(resumed, straight):
        assert a["status"] == "completed" and a["resumed_from_step"] == first[0]["steps_done"]
        assert a["final_eval_loss"] == pytest.approx(b["final_eval_loss"], rel=EXACT, abs=0)


@pytest.mark.parametrize("overrides, message", [
    (["train.branch_tokens=[1e4]"], "warmup-stable-decay trunk: it needs optim=wsd, got optim.name='cosine'"),
    (["optim=wsd", "train.branch_tokens=[1e4]"], "leave train.steps and train.flops unset"),
    (["optim=wsd", "train.steps=null", "train.branch_tokens=[1e4,-5]"], r"branch_tokens\[1\] must be a positive"),
    (["optim=wsd", "train.steps=null", "train.branch_tokens=[1e4]", "train.seeds=[0,1]"], "cannot be combined"),
    (["train.seeds=[]"], r"train.seeds must list at least one value, got \[\]"),
    (["optim.lrs=[0.01,0]"], r"optim.lrs\[1\] must be a positive number, got 0"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps must be a non-negative integer or null, got -1"),
    (["optim=wsd", "train.steps=null", "train.branch_tokens=[1e4]", "optim.lr=null", "optim.lr_horizon_steps=100"],
     "share their trunk's peak rate"),
    (["optim.lr_horizon_steps=0"], "optim.lr_horizon_steps must be a positive integer, got 0"),
    (["optim.lr_horizon_exponent=-0.5"], "optim.lr_horizon_exponent must be a number from 0 to 2, got -0.5"),
])
def test_branching_and_packing_config_errors(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train.run_cell(make_cfg(*overrides))


def test_sweep_options_turn_grid_axes_into_branches_and_packs():
    spec = {"name": "economy", "overrides": ["model.seq_len=32", "train.batch_size=8"], "wsd_branches": True,
            "pack": True, "grids": [{"model": ["s01", "s02"], "train.tokens": [2560, 5120, 7680]},
                                    {"model": ["s01"], "train.seed": [0, 1, 2], "train.steps": [24]}]}
    cells = sweep_file.cells(spec, [])
    assert len(cells) == 3  # two branched sizes and one pack of three seeds
    assert "train.branch_tokens=[2560,5120,7680]" in cells[0] and "optim=wsd" in cells[0]
    assert "train.seeds=[0,1,2]" in cells[2]
    rows = sweep_plan.plan(spec, [])
    assert len(rows) == 9 and [r.cfg.train.seed for r in rows[6:]] == [0, 1, 2]
    # Per size: the trunk to the last fork (24 steps) and three cooldowns (2 + 4 + 6) instead of 10 + 20 + 30.
    assert sum(r.trained_tokens for r in rows[:3]) == (24 + 2 + 4 + 6) * 8 * 32
    assert {r.trained_tokens for r in rows[6:]} == {24 * 8 * 32}


def test_progress_line_follows_a_trunk_before_its_branches_start(tmp_path):
    spec = {"name": "economy", "wsd_branches": True, "overrides": ["model.seq_len=32", "train.batch_size=8"],
            "grids": [{"model": ["s01"], "train.tokens": [2560, 5120, 7680]}]}
    rows = sweep_plan.plan(spec, [f"results_dir={tmp_path}"])
    trunk = rows[0].trunk
    trunk.mkdir(parents=True)
    runs.write_json_atomic(trunk / "summary.json", {"status": "running"})
    runs.write_json_atomic(trunk / "progress.json", {"step": 16})
    line = progress.SweepProgress(rows).report()
    # Forks at 8, 16, 24 of 10, 20, 30 steps: each branch's history so far is min(fork, 16) of its steps.
    assert line.startswith("[sweep] 0/3 runs done, 67% of the compute; training: s01 trunk step 16"), line


def test_a_failing_pack_marks_every_member_failed(make_cfg, monkeypatch):
    cfg = make_cfg("train.seeds=[0,1]", "sweep=failing")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(program, "build", boom)
        with pytest.raises(RuntimeError, match="boom"):
            train.run_pack(cfg)
    folders = [runs.run_dir(m) for m in packing.members(cfg)]
    for f in folders:
        assert runs.read_summary(f)["status"] == "failed" and "boom" in (f / "error.txt").read_text()
    assert [s["status"] for s in train.run_pack(cfg)] == ["failed", "failed"]  # kept until asked
    retried = train.run_pack(make_cfg("train.seeds=[0,1]", "sweep=failing", "rerun_failed=true"))
    assert [s["status"] for s in retried] == ["completed", "completed"]


def test_cells_launch_largest_first_and_finished_cells_weigh_nothing(tmp_path):
    spec = {"name": "order", "overrides": ["model.seq_len=32", "train.batch_size=8"],
            "grids": [{"model": ["s01", "s02"], "train.tokens": [2560, 7680]}]}
    rows = sweep_plan.plan(spec, [f"results_dir={tmp_path}"])
    work = {r.cell: r.remaining_work for r in rows}
    assert sweep.largest_first(spec["grids"][0], work) == {"model": ["s02", "s01"], "train.tokens": [7680, 2560]}
    for r in rows:  # s02's runs are done: only s01's remaining work counts
        if r.model == "s02":
            r.status = "completed"
    work = {r.cell: r.remaining_work for r in rows}
    assert sweep.largest_first(spec["grids"][0], work)["model"] == ["s01", "s02"]


def test_packed_runs_share_the_engine_progress_and_checkpoint_cadence(make_cfg, monkeypatch):
    """One loop for single and packed runs: a pack writes progress.json for every member and saves a checkpoint
    every train.checkpoint_every_steps, as a single run does."""
    saved = []
    real_save = engine.checkpoints.save

    def recording_save(mgr, step, *args):
        saved.append((mgr.directory.name, step))
        return real_save(mgr, step, *args)

    cfg = make_cfg("train.seeds=[0,1]", "train.checkpoint_every_steps=8", "sweep=cadence")
    with monkeypatch.context() as m:
        m.setattr(engine.checkpoints, "save", recording_save)
        summaries = train.run_pack(cfg)
        single = train.run(make_cfg("train.checkpoint_every_steps=8", "sweep=cadence_single"))
    assert [s["status"] for s in summaries] == ["completed", "completed"] and single["status"] == "completed"
    assert saved == [("ckpt", 8), ("ckpt", 16), ("ckpt", 24)] * 2  # the pack's, then the single run's
    for member in packing.members(cfg):
        assert json.loads((runs.run_dir(member) / "progress.json").read_text()) == {"step": 24}


def test_a_run_trains_at_its_horizon_rate(make_cfg):
    """optim.lr_horizon_steps reaches the training loop: the run's recorded peak rate is the planned, lowered one."""
    cfg = make_cfg("optim.lr=null", "optim.lr_horizon_steps=6", "sweep=horizon")  # 24 steps: factor (6/24)^0.5
    rule = sizes.default_learning_rate(cfg.model.d_model, cfg.train.batch_size * cfg.model.seq_len)
    s = train.run(cfg)
    assert s["status"] == "completed" and s["lr"] == pytest.approx(rule * 0.5)
