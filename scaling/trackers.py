"""Experiment trackers: every run's curves and settings in TensorBoard and/or Weights & Biases (logger=...).

* TensorBoard: one log directory per sweep, <results>/<sweep>/tensorboard/, one sub-directory per run id (event
  files written with TensorBoard's own writer, no TensorFlow); the run's config and its N, N_total, tokens and
  FLOPs as hyperparameters (the HParams plugin); `tensorboard --logdir results/<sweep>/tensorboard`.
* Weights & Biases: one W&B run per run, `group` = the sweep, `name` = its size, budget and seed, `id` = the run
  id, so a resumed run continues its own W&B run; WANDB_MODE=offline writes it under the run folder for
  `wandb sync` later.

What is logged, at every evaluation point and at about TRAIN_POINTS training steps in between: train and eval loss
(nats per token), eval bits per byte, learning rate, tokens and FLOPs seen (C = 6 N tokens), tokens per second, and
the probe metrics. A run remembers the last step it logged (<run>/tracked.json): a resumed run, which recomputes
the steps after its checkpoint, and a relaunched sweep write no point twice. A tracker that cannot start (not
installed, no login or network for W&B online) is one line on stderr, and the run goes on without it; a tracker
that fails later is dropped the same way. Only process 0 of a multi-process run logs.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("scaling.train")

TRAIN_POINTS = 50  # training-loss points per run between its evaluations, about
STATE = "tracked.json"  # in the run folder: {"step": the last step logged to the trackers}


def _say(message: str) -> None:
    print(f"scaling: {message}", file=sys.stderr, flush=True)


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config as {dotted key: bool, int, float or str} (what both trackers take as hyperparameters)."""
    out = {}

    def walk(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)

    walk(OmegaConf.to_container(cfg, resolve=True))
    return out


class TensorBoard:
    def __init__(self, cfg: DictConfig, folder: Path, hparams: dict):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.Event, self.Summary = Event, Summary
        self.writer = EventFileWriter(str(folder.parent / "tensorboard" / folder.name))
        if hparams:
            self.writer.add_event(Event(wall_time=time.time(), summary=hp.hparams_pb(hparams, trial_id=folder.name)))

    def log(self, step: int, values: dict) -> None:
        summary = self.Summary(value=[self.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self.writer.add_event(self.Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, cfg: DictConfig, folder: Path, hparams: dict):
        import wandb

        name = f"{cfg.model.name} {hparams.get('C', 0):.2g} FLOPs seed {cfg.train.seed}"
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.sweep, name=name,
                              id=folder.name, resume="allow", dir=str(folder), config=hparams, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", init_timeout=60))

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB}


class Trackers:
    """The trackers of one run (none at all when logger.trackers is empty)."""

    def __init__(self, cfg: DictConfig, folder: Path, hparams: dict, main_process: bool = True):
        self.folder, self.backends = folder, {}
        self.last = _last_step(folder)
        if not main_process:
            return
        for name in cfg.logger.trackers:
            try:
                self.backends[name] = BACKENDS[name](cfg, folder, hparams)
            except Exception as e:  # noqa: BLE001 -- not installed, no login, no network: the run goes on
                _say(f"{name} tracker not started for run {folder.name} ({_one_line(e)}); the run goes on without "
                     f"it" + (f" (pip install -e '.[{name}]')" if isinstance(e, ImportError) else ""))

    def log(self, step: int, values: dict) -> None:
        """values at step, unless an earlier launch of the run logged this step already."""
        if not self.backends or step <= self.last:
            return
        clean = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for name, backend in list(self.backends.items()):
            try:
                backend.log(step, clean)
            except Exception as e:  # noqa: BLE001
                _say(f"{name} tracker failed for run {self.folder.name} ({_one_line(e)}); it logs no more")
                self.backends.pop(name)
        self.last = step
        (self.folder / STATE).write_text(json.dumps({"step": step}))

    def close(self) -> None:
        for name, backend in self.backends.items():
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001
                _say(f"{name} tracker did not close cleanly for run {self.folder.name} ({_one_line(e)})")
        self.backends = {}


def _last_step(folder: Path) -> int:
    try:
        return int(json.loads((folder / STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _one_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def row_values(row: dict, N: int) -> dict:
    """An evaluation row (scaling.engine) as tracker scalars."""
    out = {"loss/train": row.get("train_loss"), "loss/eval": row.get("eval_loss"), "bpb/eval": row.get("eval_bpb"),
           "lr": row.get("lr"), "tokens": row.get("tokens_seen"), "flops": 6 * N * row["tokens_seen"],
           "tokens_per_s": row.get("tokens_per_s")}
    out.update({k: v for k, v in row.items() if k.startswith("probe/")})
    return {k: v for k, v in out.items() if v is not None}


def log_fits(results: Path, doc: dict) -> None:
    """A sweep's fitted laws (fit.json) in the trackers its runs logged to: TensorBoard scalars under
    <results>/tensorboard/fits, a W&B run `<sweep>-fits` of the sweep's group with them in its summary."""
    cfg = _sweep_config(results)
    if cfg is None or not OmegaConf.select(cfg, "logger.trackers"):
        return
    values = fit_values(doc)
    if not values:
        return
    fake = results / "fits"  # TensorBoard's sub-directory; W&B's id
    for name in cfg.logger.trackers:
        try:
            if name == "tensorboard":
                tb = TensorBoard(cfg, fake, {})
                tb.log(0, values)
                tb.close()
            else:
                import wandb

                run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.sweep,
                                 name=f"{cfg.sweep}: fitted laws", id=f"{cfg.sweep}-fits", job_type="fits",
                                 resume="allow", dir=str(results), reinit="create_new",
                                 settings=wandb.Settings(silent=True, console="off", init_timeout=60))
                run.summary.update(values)
                run.finish()
        except Exception as e:  # noqa: BLE001
            _say(f"{name} tracker: the fits were not logged ({_one_line(e)})")


def fit_values(doc: dict) -> dict:
    """The numbers of fit.json worth a glance beside the curves: each law's parameters, the frontier law's held-out
    error and the extrapolation check's largest error."""
    out = {}
    for form, f in (doc.get("forms") or {}).items():
        for p, v in f.get("params", {}).items():
            if p not in f.get("not_identified", {}) and isinstance(v.get("value"), (int, float)):
                out[f"fit/{form}/{p}"] = v["value"]
    front = doc.get("frontier_law") or {}
    if (check := front.get("check")) and check.get("rows"):
        out["fit/frontier_law/held_out_error"] = check["rows"][0]["rel_error"]
    if (e := doc.get("extrapolation")) and e.get("max_abs_rel_error") is not None:
        out["fit/extrapolation/max_abs_error"] = e["max_abs_rel_error"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _sweep_config(results: Path) -> DictConfig | None:
    """The config of one of the sweep's runs (its logger settings are the sweep's)."""
    for path in sorted(Path(results).glob("*/config.yaml")):
        try:
            return OmegaConf.load(path)
        except Exception:  # noqa: BLE001, S112 -- an unreadable config: try the next run
            continue
    return None
