"""A sweep's plan: every cell composed by Hydra, validated, and expanded into the runs it will write.

Pure (no JAX): `scaling plan` lives here. A cell is one run, a pack of runs (scaling.packing) or a row of WSD
branches off one trunk (scaling.branching); each becomes one PlannedRun per run it writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from scaling import branching, packing, runs, sizes
from scaling import plan as plans
from scaling.config import ConfigError, register, validate
from scaling.sweep_file import cells


@dataclass
class PlannedRun:
    cfg: DictConfig  # the standalone run
    cell: tuple[str, ...]  # the Hydra overrides of the cell that trains it
    model: str
    N: int
    unique_tokens: float | None  # data.unique_tokens (None: the whole training split)
    steps: int
    tokens: int  # tokens the run trains on
    trained_tokens: int  # tokens its cell trains for it (a branched cell's trunk counted once)
    hw_flops: float  # hardware FLOPs of the whole run (scaling.sizes)
    shape: sizes.Shape
    status: str  # from its summary.json, "new" if none
    trunk: Path | None = None  # a WSD branch's trunk folder
    fork: int | None = None  # the trunk step it branches off at
    est_s: float | None = None  # estimated seconds to train (scaling plan --time)
    memory: object = None  # scaling.memory.Memory per device, set by scaling.memory.check
    pack: int = 1  # runs trained in one program with this one (scaling.packing), itself included
    lr: float | None = None  # peak learning rate (scaling.plan.peak_lr)

    @property
    def C(self) -> float:
        return 6 * self.N * self.tokens

    @property
    def folder(self) -> Path:
        return runs.run_dir(self.cfg)

    @property
    def remaining_work(self) -> float:
        """Hardware FLOPs the run still needs (its share of a trunk included; none if finished)."""
        return 0.0 if self.status in runs.FINISHED else self.hw_flops * self.trained_tokens / self.tokens


def compose(overrides: list[str]) -> DictConfig:
    register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="scaling.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[o for o in overrides if not o.startswith("hydra")])


def _one_line(e: Exception) -> str:
    """Hydra's multi-line composition error as one line: its first line and what is allowed."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()] or [type(e).__name__]
    if "Available options" in str(e):
        at = next(i for i, x in enumerate(lines) if x.startswith("Available options"))
        options = [x for x in lines[at + 1:] if not x.startswith(("Config search path", "provider="))]
        return f"{lines[0]}; allowed: {', '.join(options)}"
    if lines[0].startswith("Could not override"):
        return f"{lines[0]} There is no such config key (see scaling/config.py)."
    if lines[0].startswith("Error merging override") and e.__cause__ is not None:
        return f"{lines[0]}: {str(e.__cause__).strip().splitlines()[0]}"  # the value and the type it should have
    return lines[0]


def describe(overrides: list[str]) -> list[PlannedRun]:
    """Compose and validate one cell; return the runs it writes."""
    where = f"cell {' '.join(overrides)}"
    try:
        cfg = compose(overrides)
    except Exception as e:  # noqa: BLE001 -- Hydra raises several kinds; each names the bad override
        raise ConfigError(f"{where}: {_one_line(e)}") from None
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    p = plans.plan_run(cfg)
    if cfg.train.branch_tokens is not None:
        trunk, branches = branching.plan(cfg)
        last = branches[-1].fork
        parts = [(b.cfg, b.steps, (b.steps - b.fork + (last if b is branches[-1] else 0)) * p.tokens_per_step,
                  runs.trunk_dir(cfg, trunk), b.fork) for b in branches]
        pack = 1  # a trunk and its branches train one at a time
    else:
        members = packing.members(cfg) if packing.is_packed(cfg) else [cfg]
        parts = [(c, p.steps, p.tokens, None, None) for c in members]
        pack = len(members)
    hw = sizes.flops_per_token(p.shape)["flops_hardware"]
    return [PlannedRun(c, tuple(overrides), cfg.model.name, p.N, cfg.data.unique_tokens, steps,
                       steps * p.tokens_per_step, trained, hw * steps * p.tokens_per_step, p.shape,
                       (runs.read_summary(runs.run_dir(c)) or {}).get("status", "new"), trunk, fork, pack=pack,
                       lr=plans.peak_lr(c, p.shape, steps))
            for c, steps, trained, trunk, fork in parts]


def plan(spec: dict, extra: list[str]) -> list[PlannedRun]:
    return [row for c in cells(spec, extra) for row in describe(c)]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"


def print_plan(name: str, rows: list[PlannedRun], target: str = "", device: str = "") -> None:
    print(f"sweep {name}: {len(rows)} cells" + (f"; memory per device for {target} (scaling.memory)" if target else ""))
    print(f"{'#':>3} {'model':6} {'N':>9} {'N_total':>9} {'unique':>9} {'steps':>7} {'tokens':>9} {'C (6ND)':>9} "
          f"{'peak lr':>8} {'est. s':>7} {'GiB/dev':>7}  status")
    for i, r in enumerate(rows, 1):
        unique = "all" if r.unique_tokens is None else f"{r.unique_tokens:.3g}"
        est = f"{r.est_s:.0f}" if r.est_s is not None else "-"
        mem = f"{r.memory.total / 2**30:.3g}" if r.memory is not None else "-"
        n_total = sizes.count_params(r.shape)["N_total"]
        print(f"{i:>3} {r.model:6} {r.N:>9.3g} {n_total:>9.3g} {unique:>9} {r.steps:>7} {r.tokens:>9.3g} {r.C:>9.3g} "
              f"{r.lr:>8.3g} {est:>7} {mem:>7}  {r.status}")
    todo = [r for r in rows if r.status != "completed"]
    total = sum(r.est_s or 0 for r in todo)

    def decades(values) -> float:
        return math.log10(max(values) / min(values))

    print(f"total: C {sum(r.C for r in rows):.3g} FLOPs over {decades([r.C for r in rows]):.1f} decades of "
          f"compute and {decades([r.N for r in rows]):.1f} of N; {len(todo)} to train"
          + (f", about {_duration(total)} on one process of {device or 'this machine'}" if total else ""))
    trained, separate = sum(r.trained_tokens * r.N for r in rows), sum(r.tokens * r.N for r in rows)
    if trained < separate:
        print(f"warmup-stable-decay branching trains {trained / separate:.0%} of the compute of separate runs")
