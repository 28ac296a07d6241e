"""sweeps/standard.yaml, the grid above the transition for a GPU: its shape as planned (no JAX), its corpus's
repetition, and the whole command (train, collect, fit, report) dry-run on the CPU with tiny models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import yaml

from scaling import data, sizes
from scaling.sweep_file import load_sweep, scaled
from scaling.sweep_plan import plan

STANDARD = Path(__file__).parent.parent / "sweeps" / "standard.yaml"


def _budgets(rows):
    out = defaultdict(list)
    for r in rows:
        out[round(math.log10(r.C), 1)].append(r)
    return dict(sorted(out.items()))


def test_the_standard_grid_brackets_four_budgets_and_holds_out_the_largest_with_three_packed_seeds():
    spec = load_sweep(STANDARD)
    rows = plan(spec, [])
    budgets = _budgets(rows)
    assert len(budgets) >= 4 and max(budgets) - min(budgets) >= 1.5 - 1e-9
    assert min(r.C for r in rows) >= 7.9e13 * 0.99  # above the transition (docs/protocol.md)
    for runs in budgets.values():
        assert len({r.model for r in runs}) >= 5
        assert max(r.N for r in runs) / min(r.N for r in runs) >= 4
    held_out = budgets[max(budgets)]
    packs = [r for r in held_out if r.pack == 3]
    assert len(packs) == 3 and len({r.model for r in packs}) == 1
    assert sorted(int(r.cfg.train.seed) for r in packs) == [0, 1, 2]
    # the packed size is the held-out budget's middle one: its predicted best
    by_n = sorted({r.N for r in held_out})
    assert packs[0].N == by_n[len(by_n) // 2]
    assert {r.cfg.data.corpus for r in rows} == {"python"}


def test_no_standard_run_sees_its_data_more_than_four_times(cache_dir):
    corpus = data.load_corpus("python", cache_dir=str(cache_dir))
    rows = plan(load_sweep(STANDARD), [])
    epochs = max(r.tokens for r in rows) / corpus.n_train
    assert epochs <= 4, f"the largest run sees the python corpus {epochs:.2f} times"


def test_scale_multiplies_every_budget_into_its_own_folder():
    spec = load_sweep(STANDARD)
    three = scaled(spec, 3.0)
    assert three["name"] == "standard-x3"
    before, after = plan(spec, []), plan(three, [])
    assert [round(b.C / a.C, 2) for b, a in zip(before, after)] == [round(1 / 3, 2)] * len(before)
    assert scaled(spec, 1.0) is spec


def test_the_standard_command_runs_end_to_end_at_a_tiny_scale(tmp_path, cache_dir):
    """The same budgets and held-out pack of seeds, three of each budget's sizes (its smallest, middle and
    largest: each run costs a few seconds of start-up, whatever its size), each size mapped in order onto the
    smallest ladder sizes and every budget scaled down, through `scaling sweep`: every run trains, the sweep is
    collected, fitted and reported, and the report leads with the frontier law's held-out prediction."""
    spec = yaml.safe_load(STANDARD.read_text())
    names = sorted({m for g in spec["grids"] for m in g["model"]}, key=lambda m: sizes.ALL_SIZE_NAMES.index(m))
    tiny = dict(zip(names, sizes.ALL_SIZE_NAMES))
    by_budget = defaultdict(list)
    for g in spec["grids"]:
        by_budget[g["train.flops"][0]] += [m for m in g["model"] if m not in by_budget[g["train.flops"][0]]]
    kept = {c: {models[0], models[len(models) // 2], models[-1]} for c, models in by_budget.items()}
    for g in spec["grids"]:
        g["model"] = [tiny[m] for m in g["model"] if m in kept[g["train.flops"][0]] or "train.seed" in g]
    spec["name"] = "standard-tiny"
    spec["n_boot"] = 20
    spec["overrides"] = [o for o in spec["overrides"]
                         if not o.startswith(("data=", "model.dtype", "train.batch", "train.n_evals", "probes."))]
    spec["overrides"] += ["launcher=joblib", "model.seq_len=32", "train.batch_size=8", "train.steps_per_dispatch=4", "train.n_evals=3",
                          "train.progress=none", "data.eval_windows=32"]
    sweep = tmp_path / "standard-tiny.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(sweep), "--scale", "6e-6",
                          f"results_dir={tmp_path / 'r'}", f"data.cache_dir={cache_dir}"],
                         capture_output=True, text=True, check=False, env={**os.environ, "SCALING_CACHE": str(cache_dir)})
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "r" / "standard-tiny-x6e-06"
    table = pd.read_csv(folder / "runs.csv")
    assert len(table) == 14 and (table["status"] == "completed").all()
    top = table[table["target_flops"] == table["target_flops"].max()]
    assert len(top) == 5 and sorted(top[top["model"] == tiny["s10"]]["seed"]) == [0, 1, 2]
    fit = json.loads((folder / "fit.json").read_text())
    assert len(fit["frontier_law"]["check"]["rows"]) == 1  # the held-out budget's best loss, predicted  # the held-out budget's best loss, predicted
    answer = (folder / "report.md").read_text().split("## The answer", 1)[1].strip().splitlines()
    assert answer[0].startswith("- Frontier law") and answer[1].startswith("- Held out: the best loss")
