"""Run identity and run directories.

A run lives in <results_dir>/<sweep>/<run_id>/ where run_id is a stable hash of the resolved config minus the
keys that cannot change its result (scaling.config.NON_IDENTITY_KEYS). The directory holds:

    config.yaml     the resolved config
    metrics.jsonl   one line per log point
    summary.json    status and totals; written at start (status "running") and at the end
    error.txt       the traceback of a run that raised
    ckpt/           Orbax checkpoints (latest only)

Status values: running, completed, diverged, interrupted, failed. A run whose summary still says "running"
was killed without a chance to write (kill -9, node loss): relaunching resumes it like an interrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scaling.config import NON_IDENTITY_KEYS, OPTIONAL_KEYS

FINISHED = {"completed", "diverged"}  # never retrained
RESUMABLE = {"running", "interrupted"}  # resumed from the latest checkpoint
RETRY_ON_REQUEST = {"failed"}  # rerun only with rerun_failed=true


def identity(cfg: DictConfig) -> dict:
    """The part of the config that determines the result, as a plain dict."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_IDENTITY_KEYS | OPTIONAL_KEYS:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {})
        if key in NON_IDENTITY_KEYS or node.get(leaf) is None:
            node.pop(leaf, None)
    d.get("model", {}).pop("name", None)  # a named size and its explicit shape are the same run
    return d


def run_id(cfg: DictConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / cfg.sweep / run_id(cfg)


def read_summary(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, obj) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_plain))
    os.replace(tmp, path)


def _plain(x):
    try:
        return x.item()
    except AttributeError:
        return str(x)
