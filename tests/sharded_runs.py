"""Trains one tiny run under several meshes in one process with 8 forced CPU devices; prints each run's losses as
JSON. Run by tests/test_sharding.py in a subprocess, because a process fixes its device count when JAX starts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_runs.py RESULTS_DIR CACHE_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from interrupt import StopAfter

from scaling import engine, runs, train
from scaling.config import register

BASE = ["model=s02", "model.seq_len=32", "train.steps=50", "train.batch_size=8", "train.steps_per_dispatch=5",
        "train.n_evals=5", "train.progress=none", "data.eval_windows=32", "data.unique_tokens=20000",
        "optim.warmup_frac=0.1"]
MESHES = {  # name: overrides; "one" is the unsharded reference
    "one": ["train.devices=1"],
    "fsdp2": ["train.devices=2", "train.fsdp=true"],
    "fsdp4": ["train.devices=4", "train.fsdp=true"],
    "fsdp8": ["train.devices=8", "train.fsdp=true"],
    "fsdp4_tp2": ["train.devices=8", "train.fsdp=true", "train.tensor_parallel=2"],
    "remat": ["train.devices=1", "model.remat=true"],
}


def compose_run(results: str, cache: str, sweep: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="scaling.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[*BASE, f"results_dir={results}", f"data.cache_dir={cache}",
                                                        f"sweep={sweep}", *overrides])


def losses(folder: Path) -> dict:
    rows = runs.read_metrics(folder)[0]
    return {"step": [r["step"] for r in rows], "eval": [r["eval_loss"] for r in rows],
            "train": [r["train_loss"] for r in rows]}


def main(results: str, cache: str) -> None:
    register()
    out = {}
    for name, overrides in MESHES.items():
        s = train.run(compose_run(results, cache, name, *overrides))
        out[name] = {**losses(runs.run_dir(compose_run(results, cache, name, *overrides))), "devices": s["devices"],
                     "mesh": s["mesh"], "run_id": s["run_id"], "state_bytes": s["state_bytes_per_device"]}
    # Saved on 4 devices (fully sharded) after 2 chunks, resumed on 2 (replicated): Orbax reshards on restore.
    cfg4 = compose_run(results, cache, "reshard", "train.devices=4", "train.fsdp=true")
    real_stop, engine.Stop = engine.Stop, StopAfter(2)
    try:
        first = train.run(cfg4)
    finally:
        engine.Stop = real_stop
    second = train.run(compose_run(results, cache, "reshard", "train.devices=2"))
    out["reshard_4_to_2"] = {**losses(runs.run_dir(cfg4)), "stopped_at": first["steps_done"],
                             "status": [first["status"], second["status"]], "devices": second["devices"],
                             "resumed_from_step": second["resumed_from_step"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
