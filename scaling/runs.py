"""The run folder: its layout, a run's identity, and every read and write of it. Other modules ask this one.

    <results_dir>/<sweep>/              one sweep (`scaling collect` writes runs.csv, runs.parquet, curves.parquet)
        <run_id>/                       one run: run_id is a stable hash of the resolved config minus the keys
                                        that cannot change its result (scaling.config.NON_IDENTITY_KEYS)
            config.yaml                 the resolved config
            metrics.jsonl               one line per evaluation point
            progress.json               the latest finished step, every few seconds (the sweep's progress line)
            summary.json                status and totals; written at the start (status "running") and the end
            error.txt                   the traceback of a run that raised
            ckpt/                       Orbax checkpoints (latest only)
            forks/                      a WSD trunk's saved states at its branches' fork steps
            lock                        held by the one process training the run (scaling.lock)
            tracked.json, wandb/        the last step logged to the trackers; W&B's files (scaling.trackers)
        trunks/<run_id>/                WSD trunks (scaling.branching): run folders the fits never see
        packs/<id>/ckpt/                the checkpoint of a pack of runs trained together (scaling.packing)
        tensorboard/<run_id>/, fits/    TensorBoard event files of each run and of the sweep's fits (logger=...)
        plots/, .hydra/, sweep.log      figures; Hydra's own logs; everything the sweep's processes printed

Status values: running, completed, diverged, interrupted, failed. A run whose summary still says "running"
was killed without a chance to write (kill -9, node loss): relaunching resumes it like an interrupted one.
Every JSON file is replaced atomically (written aside, then renamed), so a kill never leaves half of one.
When several processes train one run (jax.distributed, scaling.devices.join), only the first writes the folder
and takes its lock; the others compute their shards and write theirs into its checkpoints through Orbax.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scaling import config
from scaling import plan as plans

HOST = socket.gethostname()

CONFIG, METRICS, PROGRESS, SUMMARY, ERROR = "config.yaml", "metrics.jsonl", "progress.json", "summary.json", "error.txt"
CKPT, FORKS, LOCK = "ckpt", "forks", "lock"
NOT_RUNS = {"plots", "reference", "trunks", "packs", "tensorboard", "wandb"}  # folders of a sweep that hold no run of their own

PRIMARY = True  # False in every process but the first of a multi-process run: it writes nothing here

FINISHED = {"completed", "diverged"}  # never retrained
RESUMABLE = {"running", "interrupted"}  # resumed from the latest checkpoint
RETRY_ON_REQUEST = {"failed"}  # rerun only with rerun_failed=true


# ---- identity and places --------------------------------------------------------------------------------------

def identity(cfg: DictConfig) -> dict:
    """The part of the config that determines the result, as a plain dict: every key of IDENTITY_KEYS, and any
    other key (one added since) only where it differs from its default; never the keys that cannot change the
    result (NON_IDENTITY_KEYS), nor the size's name (a named size and its explicit shape are the same run)."""
    known = config.defaults()
    out: dict = {}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resolved["model"].get("vocab") is None:  # the tokenizer's, as the model is built (256 for bytes)
        resolved["model"]["vocab"] = plans.vocab_of(cfg)
    for key, value in _flatten(resolved):
        if key in config.NON_IDENTITY_KEYS or key == "model.name":
            continue
        if key not in config.IDENTITY_KEYS and key in known and value == known[key]:
            continue
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if config.RESULTS_VERSION != 1:
        out["results_version"] = config.RESULTS_VERSION
    return out


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def run_id(cfg: DictConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sweep_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / cfg.sweep


def run_dir(cfg: DictConfig) -> Path:
    return sweep_dir(cfg) / run_id(cfg)


def trunk_dir(cfg: DictConfig, trunk: DictConfig) -> Path:
    """Where the WSD trunk of cfg's branches lives."""
    return sweep_dir(cfg) / "trunks" / run_id(trunk)


def pack_dir(folders: list[Path]) -> Path:
    """Where the checkpoint of the pack training these run folders together lives."""
    key = hashlib.sha256(" ".join(f.name for f in folders).encode()).hexdigest()[:12]
    return folders[0].parent / "packs" / key


def run_folders(results: Path) -> list[Path]:
    """The folders of a sweep that may hold a run, sorted."""
    return sorted(p for p in Path(results).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_RUNS)


# ---- lifecycle ------------------------------------------------------------------------------------------------

def is_settled(summary: dict | None, rerun_failed: bool) -> bool:
    """True when a relaunch must leave the run alone: finished, or failed without rerun_failed."""
    status = (summary or {}).get("status")
    return status in FINISHED or (status in RETRY_ON_REQUEST and not rerun_failed)


def prepare(folder: Path, cfg: DictConfig) -> None:
    """Create the run folder and write its resolved config."""
    if not PRIMARY:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))


class StorageError(RuntimeError):
    """A run stopped because its folder could not be written (a full disk, lost permissions, an I/O error) or its
    checkpoint could not be read: it is marked interrupted, not failed, and a relaunch resumes it (from its last
    checkpoint, or from the one before a checkpoint set aside). The process that met it trains nothing more."""


# What a storage failure says, whichever library met it: Python raises OSError with an errno; TensorStore (Orbax's
# writer) raises ValueError with the operating system's words in the message.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EIO: "input/output error", errno.EROFS: "read-only file system",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def storage_problem(e: BaseException) -> str | None:
    """The storage failure an exception (or one it was raised from) reports, in words, else None."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return STORAGE_ERRNOS[e.errno] + (f" ({e.filename})" if e.filename else "")
        text = str(e)
        if (words := storage_words(text)) is not None:
            path = re.search(r'"(/[^"]+)"', text)
            return words + (f" ({path.group(1)})" if path else "")
        e = e.__cause__ or e.__context__
    return None


def storage_words(text: str) -> str | None:
    """The storage failure a message names in the operating system's words (STORAGE_ERRNOS), else None."""
    low = text.lower()
    return next((words for words in STORAGE_ERRNOS.values() if words in low), None)


def record_interruption(folder: Path, why: str) -> None:
    """Mark a run interrupted by a storage failure, if its folder can still be written; if not, its summary still
    says running, which a relaunch resumes just the same."""
    if not PRIMARY:
        return
    for partial in (Path(folder) / CKPT).glob("*.orbax-checkpoint-tmp*"):  # the save that failed: room to write
        shutil.rmtree(partial, ignore_errors=True)
    try:
        summary = read_summary(folder) or {}
        summary.update(status="interrupted", error=why)
        write_summary(folder, summary)
    except OSError:
        pass


def record_failure(folder: Path, e: Exception) -> None:
    """Mark a run failed, with the traceback being handled in error.txt (rerun only with rerun_failed=true)."""
    if not PRIMARY:
        return
    try:
        (folder / ERROR).write_text(traceback.format_exc())
        summary = read_summary(folder) or {}
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        write_summary(folder, summary)
    except OSError:  # the folder cannot be written (the error being recorded may be that): the caller reports it
        pass


# ---- files ----------------------------------------------------------------------------------------------------

def read_summary(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def write_summary(folder: Path, summary: dict) -> None:
    write_json_atomic(folder / SUMMARY, summary)


def read_metrics(folder: Path) -> tuple[list[dict], list[int]]:
    """The valid log rows, and the 1-based numbers of the damaged lines (a kill mid-write tears the last one);
    valid rows after a damaged line are kept."""
    path = Path(folder) / METRICS
    rows, damaged = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines() if path.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        elif line.strip():
            damaged.append(i + 1)
    return rows, damaged


def write_metrics(folder: Path, rows: list[dict]) -> None:
    if not PRIMARY:
        return
    (folder / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(folder: Path, row: dict) -> None:
    if not PRIMARY:
        return
    with (folder / METRICS).open("a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(folder: Path, step: int) -> tuple[list[dict], list[int]]:
    """Drop log rows written after the checkpoint a run resumes from (they will be written again) and damaged
    lines; keep every valid row up to it. Returns (the rows kept, the damaged line numbers dropped)."""
    rows, damaged = read_metrics(folder)
    kept = [r for r in rows if r["step"] <= step]
    if (folder / METRICS).exists():
        write_metrics(folder, kept)
    return kept, damaged


def write_progress(folder: Path, step: int) -> None:
    write_json_atomic(folder / PROGRESS, {"step": step})


def trained_steps(folder: Path) -> int:
    """How far a run has trained, from the tail of its log or its progress file (cheap: for polling)."""
    return max(_last_logged_step(folder / METRICS), _progress_step(folder / PROGRESS))


def _last_logged_step(path: Path) -> int:
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


def write_json_atomic(path: Path, obj) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    if not PRIMARY:
        return
    tmp = path.with_name(path.name + f".tmp.{HOST}.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_plain))
    os.replace(tmp, path)


def _plain(x):
    try:
        return x.item()
    except AttributeError:
        return str(x)
