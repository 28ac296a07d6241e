"""Sweep files -> Hydra multiruns.

A sweep file (YAML) names the results folder, fixed settings and one or more grids; each grid is a Cartesian
product that Hydra's sweeper expands, and the union of the grids is the sweep:

    name: quick                      # results/<name>/
    n_boot: 1000                     # bootstrap resamples for the fits at the end (optional)
    overrides:                       # Hydra overrides applied to every cell (and may pick the launcher)
      - launcher=joblib
      - train.batch_size=32
    grids:
      - model: [s01, s02, s03]
        train.tokens: [2.5e5, 1e6]
    wsd_branches: false              # true: per grid point, the train.tokens values come from one warmup-
                                     # stable-decay trunk with a cooldown branched off at each (scaling.branching)
    pack: false                      # true: a grid's train.seed and optim.lr values train as one vmapped
                                     # program per grid point (scaling.packing)

`scaling sweep FILE [overrides]` validates every cell first (one clear line for a bad cell, before any compute),
then launches one Hydra multirun per grid (`python -m scaling.app -m ...`), so any Hydra launcher works:
basic, joblib, submitit_slurm, ray. Finished cells are skipped and interrupted ones resumed by the runs
themselves (scaling.runs), so relaunching a sweep is always safe. At the end the sweep is collected and
analysed (scaling.report).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

from scaling.config import ConfigError


def load_sweep(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {p} does not exist; sweep files live in sweeps/ (e.g. sweeps/quick.yaml)")
    spec = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    if not isinstance(spec, dict) or "grids" not in spec:
        raise ConfigError(f"{p}: a sweep file needs 'grids:' (a list of key: [values] maps)")
    spec.setdefault("name", p.stem)
    spec.setdefault("overrides", [])
    for i, g in enumerate(spec["grids"]):
        if not isinstance(g, dict) or not g:
            raise ConfigError(f"{p}: grids[{i}] must be a map of config key -> list of values")
        for key, values in g.items():
            if not isinstance(values, list) or not values:
                g[key] = [values]
    return spec


def _value(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else ("null" if v is None else str(v))


PACKED_KEYS = {"train.seed": "train.seeds", "optim.lr": "optim.lrs"}


def _grid(spec: dict, g: dict) -> tuple[dict, list[str]]:
    """A grid as launched, and the overrides it adds. With wsd_branches, its train.tokens values become one
    train.branch_tokens list (one trunk with a cooldown per budget) under optim=wsd; with pack, its train.seed
    and optim.lr values become train.seeds and optim.lrs lists (one vmapped program)."""
    g, added = dict(g), []
    if spec.get("wsd_branches") and "train.tokens" in g:
        g["train.branch_tokens"] = [g.pop("train.tokens")]
        added.append("optim=wsd")
    if spec.get("pack"):
        for key, packed in PACKED_KEYS.items():
            if len(g.get(key, [])) > 1:
                g[packed] = [g.pop(key)]
    return g, added


def cells(spec: dict, extra: list[str]) -> list[list[str]]:
    """Every cell of the sweep as a list of Hydra overrides."""
    out = []
    for g in spec["grids"]:
        g, added = _grid(spec, g)
        keys = list(g)
        for combo in itertools.product(*(g[k] for k in keys)):
            out.append([*spec["overrides"], *added, *(f"{k}={_value(v)}" for k, v in zip(keys, combo)),
                        f"sweep={spec['name']}", *extra])
    return out


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from scaling.config import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="scaling.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[o for o in overrides if not o.startswith("hydra")])


def describe(overrides: list[str]) -> list[dict]:
    """Compose and validate one cell; return its planned runs (one, or one per branched budget) with their
    size, length and compute. `trained_tokens` counts what the cell trains (a branched cell's trunk once)."""
    from scaling import branching, packing, runs, sizes
    from scaling.config import validate
    from scaling.train import resolve_steps, shape_of

    try:
        cfg = compose(overrides)
    except Exception as e:  # noqa: BLE001 -- Hydra raises several kinds; each names the bad override
        raise ConfigError(f"cell {' '.join(overrides)}: {e}") from None
    try:
        validate(cfg)
        shape = shape_of(cfg)
    except ValueError as e:
        raise ConfigError(f"cell {' '.join(overrides)}: {e}") from None
    n = sizes.count_params(shape)["N"]
    tokens_per_step = cfg.train.batch_size * shape.seq_len
    hw = sizes.flops_per_token(shape)["flops_hardware"]
    extra = {}
    if cfg.train.branch_tokens is not None:
        trunk, branches = branching.plan(cfg)
        last = max(f for *_, f in branches)
        runs_ = [(b, s, (s - f + (last if i == len(branches) - 1 else 0)) * tokens_per_step)
                 for i, (b, s, f) in enumerate(branches)]
        extra = {id(b): {"trunk": branching.trunk_dir(cfg, trunk), "fork": f} for b, _, f in branches}
    else:
        steps, _ = resolve_steps(cfg.train, n, tokens_per_step)
        packed = cfg.train.seeds is not None or cfg.optim.lrs is not None
        runs_ = [(c, steps, steps * tokens_per_step) for c in (packing.members(cfg) if packed else [cfg])]
    out = []
    for c, steps, trained in runs_:
        tokens = steps * tokens_per_step
        status = (runs.read_summary(runs.run_dir(c)) or {}).get("status", "new")
        out.append({"cfg": c, "model": cfg.model.name, "N": n, "D": cfg.data.unique_tokens, "steps": steps,
                    "tokens": tokens, "trained_tokens": trained, "C": 6 * n * tokens, "hw_flops": hw * tokens,
                    "shape": shape, "status": status, **extra.get(id(c), {})})
    return out


def plan(spec: dict, extra: list[str], measure: bool = True) -> list[dict]:
    rows = [dict(row, cell=tuple(c)) for c in cells(spec, extra) for row in describe(c)]
    if measure:
        from scaling.train import measure_throughput

        rates = {}
        for r in rows:
            key = (r["shape"], r["cfg"].train.batch_size)
            if key not in rates:
                rates[key] = measure_throughput(r["cfg"])
            r["est_s"] = r["trained_tokens"] / rates[key] + 8.0  # + start-up, compile and evaluation
    return rows


def print_plan(name: str, rows: list[dict]) -> None:
    print(f"sweep {name}: {len(rows)} cells")
    print(f"{'#':>3} {'model':6} {'N':>9} {'D':>9} {'steps':>7} {'tokens':>9} {'C (6ND)':>9} {'est. s':>7}  status")
    for i, r in enumerate(rows, 1):
        d = "all" if r["D"] is None else f"{r['D']:.3g}"
        est = f"{r['est_s']:.0f}" if "est_s" in r else "-"
        print(f"{i:>3} {r['model']:6} {r['N']:>9.3g} {d:>9} {r['steps']:>7} {r['tokens']:>9.3g} {r['C']:>9.3g} "
              f"{est:>7}  {r['status']}")
    todo = [r for r in rows if r["status"] != "completed"]
    total = sum(r.get("est_s", 0) for r in todo)
    def decades(key: str) -> float:
        return math.log10(max(r[key] for r in rows) / min(r[key] for r in rows))

    print(f"total: C {sum(r['C'] for r in rows):.3g} FLOPs over {decades('C'):.1f} decades of compute and "
          f"{decades('N'):.1f} of N; {len(todo)} to train"
          + (f", about {total / 60:.0f} min on one process" if total else ""))
    trained, separate = sum(r["trained_tokens"] * r["N"] for r in rows), sum(r["tokens"] * r["N"] for r in rows)
    if trained < separate:
        print(f"warmup-stable-decay branching trains {trained / separate:.0%} of the compute of separate runs")


class Progress(threading.Thread):
    """Every `every` seconds: how many of the sweep's runs are done, which are training and how far, and an ETA.

    It reads the run folders (summary.json, metrics.jsonl, progress.json), so it works under any launcher. The ETA divides the
    hardware FLOPs still to train by the FLOP rate achieved since the sweep started."""

    def __init__(self, rows: list[dict], every: float = 30.0):
        super().__init__(daemon=True)
        from scaling import runs

        self.cells = [(runs.run_dir(r["cfg"]), r) for r in rows]
        self.every, self.stop = every, threading.Event()
        self.t0 = time.time()
        self.done0 = self._done_flops()[0]

    def _done_flops(self) -> tuple[float, list[str], int]:
        from scaling import runs

        flops, training, finished, trunks = 0.0, [], 0, {}
        for folder, r in self.cells:
            s = runs.read_summary(folder) or {}
            if s.get("status") in runs.FINISHED:
                flops, finished = flops + r["hw_flops"], finished + 1
                continue
            step = _step(folder)
            if "trunk" in r:  # a branch's history up to its fork is its trunk's
                trunk_step = _step(r["trunk"])
                step = max(step, min(r["fork"], trunk_step))
                if not s and (runs.read_summary(r["trunk"]) or {}).get("status") == "running":
                    trunks[r["trunk"]] = f"{r['model']} trunk step {trunk_step}"
            flops += r["hw_flops"] * step / r["steps"]
            if s.get("status") == "running":
                training.append(f"{r['model']} {r['tokens']:.2g} tokens {100 * step / r['steps']:.0f}%")
        return flops, [*trunks.values(), *training], finished

    def report(self) -> str:
        flops, training, finished = self._done_flops()
        total = sum(r["hw_flops"] for _, r in self.cells)
        rate = (flops - self.done0) / max(time.time() - self.t0, 1e-9)
        eta = f"ETA {(total - flops) / rate / 60:.1f} min" if rate > 0 else "ETA after the first log point"
        return (f"[sweep] {finished}/{len(self.cells)} runs done, {100 * flops / total:.0f}% of the compute; "
                f"training: {', '.join(training) or '-'}; {eta}")

    def run(self):
        while not self.stop.wait(self.every):
            print(self.report(), flush=True)


def _step(folder: Path) -> int:
    """How far a run has trained, from its log or its progress file."""
    return max(_last_step(folder / "metrics.jsonl"), _progress_step(folder / "progress.json"))


def _last_step(path: Path) -> int:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="ignore").strip().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def _progress_step(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def launch(spec: dict, extra: list[str], rows: list[dict] | None = None) -> int:
    """One Hydra multirun per grid; returns the number of grids whose launch failed."""
    failures = 0
    progress = Progress(rows) if rows else None
    if progress:
        progress.start()
    try:
        for grid in spec["grids"]:
            g, added = _grid(spec, grid)
            if rows:
                mine = {tuple(c) for c in cells({**spec, "grids": [grid]}, extra)}
                g = _largest_first(g, {r["cell"]: _work(r) for r in rows if r["cell"] in mine})
            sweep_args = [f"{k}={','.join(_value(v) for v in vals)}" for k, vals in g.items()]
            cmd = [sys.executable, "-m", "scaling.app", "-m", *spec["overrides"], *added, *sweep_args,
                   f"sweep={spec['name']}", *extra]
            print("+", " ".join(cmd[1:]), flush=True)
            if subprocess.run(cmd, check=False, env=os.environ.copy()).returncode != 0:
                failures += 1
    finally:
        if progress:
            progress.stop.set()
            print(progress.report(), flush=True)
    return failures


def cli(command: str, argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(f"usage: scaling {command} SWEEP.yaml [hydra overrides]", file=sys.stderr)
        return 2
    try:
        spec = load_sweep(argv[0])
        rows = plan(spec, argv[1:], measure=command == "plan")
    except ConfigError as e:
        print(f"scaling {command}: config error: {e}", file=sys.stderr)
        return 2
    if command == "plan":
        print_plan(spec["name"], rows)
        return 0
    t0 = time.time()
    results = Path(rows[0]["cfg"].results_dir) / spec["name"]
    todo = sum(r["status"] != "completed" for r in rows)
    print(f"sweep {spec['name']}: {len(rows)} cells, {len(rows) - todo} already completed, {todo} to run "
          f"-> {results}", flush=True)
    failures = launch(spec, argv[1:], rows) if todo else 0
    from scaling import collect

    runs, _, problems = collect.collect(results)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"sweep {spec['name']}: {collect.summarize(runs)} in {time.time() - t0:.0f} s", flush=True)
    unfinished = _unfinished(rows, runs)
    for line in unfinished:
        print(f"  not finished: {line}", file=sys.stderr)
    if unfinished:
        print(f"{len(unfinished)} of {len(rows)} cells did not finish; relaunch the same command to resume them "
              "(failed runs rerun with rerun_failed=true)", file=sys.stderr)
    if not len(runs):
        print(f"no run of sweep {spec['name']} left results in {results}; nothing to report", file=sys.stderr)
        return 1
    if not todo and (results / "report.md").exists():
        print(f"nothing trained: {results / 'report.md'} stands (`scaling report {results}` rebuilds it)")
        return 0
    from analysis import report

    report.build(results, quiet=False, n_boot=int(spec.get("n_boot", 1000)))
    return 1 if failures or unfinished else 0


def _work(row: dict) -> float:
    """Hardware FLOPs a planned run still needs (its share of a trunk included; none if finished)."""
    from scaling import runs

    return 0.0 if row["status"] in runs.FINISHED else row["hw_flops"] * row["trained_tokens"] / row["tokens"]


def _largest_first(g: dict, work: dict) -> dict:
    """The grid with each axis's values ordered by the work of their cells, largest first. Hydra launches cells in
    that order, so parallel launchers (joblib, Slurm, Ray) start the longest cells first and no long cell is
    left running alone at the end (longest-processing-time-first scheduling)."""
    out = {}
    for key, values in g.items():
        def load(v, key=key):
            tag = f"{key}={_value(v)}"
            return sum(w for cell, w in work.items() if tag in cell)

        out[key] = sorted(values, key=load, reverse=True)
    return out


def _unfinished(rows: list[dict], table) -> list[str]:
    """This sweep's cells that are not completed or diverged: '<run_id> <model> <status>: <error>'."""
    from scaling import runs

    by_id = table.set_index("run_id") if len(table) else None
    out = []
    for r in rows:
        rid = runs.run_id(r["cfg"])
        status = by_id.loc[rid, "status"] if by_id is not None and rid in by_id.index else "missing"
        if status not in runs.FINISHED:
            error = by_id.loc[rid].get("error") if status != "missing" else None
            out.append(f"{rid} {r['model']} {status}" + (f": {error}" if isinstance(error, str) and error else ""))
    return out
