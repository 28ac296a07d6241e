"""Trackers (scaling.trackers): TensorBoard event files read back with TensorBoard's own event accumulator, a W&B
offline run read back with `wandb leet inspect`, one W&B run across a resume, no point written twice, and a
tracker that cannot start costs one line, not the run."""

from __future__ import annotations

import json
import subprocess

import pytest
from interrupt import StopAfter  # tests/interrupt.py

from scaling import engine, runs, trackers, train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _eval_steps(folder) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / runs.METRICS).read_text().splitlines()]


def _scalars(folder, tag: str) -> list[tuple[int, float]]:
    acc = event_accumulator.EventAccumulator(str(folder.parent / "tensorboard" / folder.name))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_holds_eval_loss_at_every_evaluation_of_two_runs_of_one_sweep(make_cfg):
    folders = []
    for model in ("s01", "s01a"):
        cfg = make_cfg(f"model={model}", "logger=tensorboard", "sweep=tb")
        assert train.run(cfg)["status"] == "completed"
        folders.append(runs.run_dir(cfg))
    assert folders[0].parent == folders[1].parent and len({f.name for f in folders}) == 2
    for folder in folders:
        metrics = [json.loads(line) for line in (folder / runs.METRICS).read_text().splitlines()]
        logged = _scalars(folder, "loss/eval")
        assert [s for s, _ in logged] == [m["step"] for m in metrics] and len(logged) == 4
        assert [v for _, v in logged] == pytest.approx([m["eval_loss"] for m in metrics], rel=1e-6)
        assert len(_scalars(folder, "loss/train")) > len(logged)  # training points between the evaluations
        assert {"bpb/eval", "lr", "tokens", "flops", "tokens_per_s"} <= set(
            event_accumulator.EventAccumulator(str(folder.parent / "tensorboard" / folder.name)).Reload()
            .Tags()["scalars"])
    # a relaunch of the finished runs writes nothing more
    before = [sorted((f.parent / "tensorboard" / f.name).iterdir()) for f in folders]
    for model in ("s01", "s01a"):
        train.run(make_cfg(f"model={model}", "logger=tensorboard", "sweep=tb"))
    assert [sorted((f.parent / "tensorboard" / f.name).iterdir()) for f in folders] == before


def _wandb_records(folder) -> tuple[set[str], list[dict]]:
    """(the W&B run ids of every offline run in the folder, every history record)."""
    ids, history = set(), []
    for path in sorted((folder / "wandb").glob("offline-run-*/run-*.wandb")):
        out = subprocess.run(["wandb", "leet", "inspect", "--json", str(path)], capture_output=True, text=True,
                             check=True, timeout=120)
        for line in out.stdout.splitlines():
            record = json.loads(line)
            if record.get("type") == "run":
                ids.add(record["run"]["run_id"])
            elif record.get("type") == "history":
                history.append(record["history"]["item"])
    return ids, history


def test_a_wandb_run_interrupted_and_resumed_keeps_one_id_and_writes_each_point_once(make_cfg, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=wandb", "sweep=wb", "train.steps=40", "train.checkpoint_every_steps=8")
    folder = runs.run_dir(cfg)
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(5))
        assert train.run(cfg)["status"] == "interrupted"
    s = train.run(cfg)
    assert s["status"] == "completed" and s["resumed_from_step"] > 0
    ids, history = _wandb_records(folder)
    assert ids == {folder.name} and len(list((folder / "wandb").glob("offline-run-*"))) == 2
    steps = [h["_step"] for h in history]
    assert len(steps) == len(set(steps))  # the steps recomputed after the checkpoint are not logged again
    evals = {h["_step"]: h["loss/eval"] for h in history if "loss/eval" in h}
    metrics = {m["step"]: m["eval_loss"] for m in map(json.loads, (folder / runs.METRICS).read_text().splitlines())}
    assert sorted(evals) == sorted(metrics) and all(evals[k] == pytest.approx(metrics[k]) for k in metrics)


def test_a_tracker_that_cannot_start_is_one_line_and_the_run_goes_on(make_cfg, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setitem(trackers.BACKENDS, "tensorboard", broken)
    cfg = make_cfg("logger=tensorboard", "sweep=broken")
    assert train.run(cfg)["status"] == "completed"
    err = [line for line in capsys.readouterr().err.splitlines() if "tracker" in line]
    assert len(err) == 1 and "tensorboard tracker not started" in err[0] and "pip install -e '.[tensorboard]'" in err[0]


def test_the_fits_of_a_sweep_go_to_its_trackers(tmp_path):
    results = tmp_path / "sweep"
    (results / "run1").mkdir(parents=True)
    (results / "run1" / "config.yaml").write_text("sweep: sweep\nlogger:\n  trackers: [tensorboard]\n  project: p\n"
                                                  "  entity: null\n")
    doc = {"forms": {"chinchilla": {"params": {"alpha": {"value": 0.3}, "A": {"value": 1e9}}, "not_identified":
                                    {"A": "its interval spans 30 orders of magnitude"}}},
           "frontier_law": {"check": {"rows": [{"rel_error": -0.0102}]}}, "extrapolation": {"max_abs_rel_error": 0.07}}
    trackers.log_fits(results, doc)
    acc = event_accumulator.EventAccumulator(str(results / "tensorboard" / "fits"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"fit/chinchilla/alpha", "fit/frontier_law/held_out_error",
                                          "fit/extrapolation/max_abs_error"}
    assert acc.Scalars("fit/frontier_law/held_out_error")[0].value == pytest.approx(-0.0102)
