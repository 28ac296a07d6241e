"""Orbax checkpoints of a training state with its loop counters, saved synchronously (a kill right after a save
finds it whole)."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from scaling import runs

logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every checkpoint step at INFO


def manager(folder: Path, max_to_keep: int | None = 1) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(Path(folder).absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False))


def save(mgr: ocp.CheckpointManager, step: int, state, acc: np.ndarray, elapsed: float) -> None:
    """acc: the loop's per-member counters (float64, shape (3, members): loss sums, counts, divergence steps).

    A save that fails (a full disk) tears down Orbax's writer threads, which go on printing asyncio tracebacks
    ('Event loop is closed') for a while after the error reaches the caller. So this process's standard error goes
    to a scratch file during a save and, once one has failed, stays there: the process trains nothing more, and
    what it must still say goes to real_stderr(). Orbax's own error log (with its writer thread's traceback) goes
    there too, rather than to the job log on standard output: the error it reports reaches the run as an exception,
    which says it in one line."""
    scratch = tempfile.TemporaryFile()  # noqa: SIM115 -- kept open (and stderr on it) if the save fails
    saved = _redirect_stderr(scratch)
    try:
        mgr.save(step, args=ocp.args.StandardSave({"state": nnx.to_pure_dict(state), "acc": acc.astype(np.float64),
                                                   "elapsed": np.asarray(elapsed, dtype=np.float64)}), force=True)
        mgr.wait_until_finished()
    except BaseException:
        _QUIET.setdefault("fd", saved)
        raise
    else:
        _restore_stderr(saved)
        scratch.close()


_QUIET: dict = {}  # {"fd": the real standard error} once a save or a restore has failed


def real_stderr():
    """Where this process's messages reach the screen: standard error, or after a failed save or restore the
    descriptor it was moved from (see save and restore)."""
    fd = _QUIET.get("fd")
    return sys.stderr if fd is None else os.fdopen(os.dup(fd), "w", buffering=1)


def record_sizes(mgr: ocp.CheckpointManager, step: int) -> None:
    """Write the size of every file of step's checkpoint beside the checkpoints (<folder>.sizes.json): a file that
    was cut short later is found by its size, before Orbax reads it (see damaged)."""
    folder = Path(mgr.directory) / str(step)
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    runs.write_json_atomic(_sizes_path(mgr), {"step": step, "sizes": sizes})


def damaged(mgr: ocp.CheckpointManager, step: int) -> str | None:
    """What is wrong with step's checkpoint by the sizes recorded when it was saved, or None (whole, or unknown)."""
    try:
        recorded = json.loads(_sizes_path(mgr).read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("step") != step:
        return None
    folder = Path(mgr.directory) / str(step)
    for rel, size in recorded["sizes"].items():
        p = folder / rel
        if not p.is_file():
            return f"its file {rel} is missing"
        if p.stat().st_size != size:
            return f"its file {rel} holds {p.stat().st_size:,} of the {size:,} bytes it was saved with"
    return None


def _sizes_path(mgr: ocp.CheckpointManager) -> Path:
    directory = Path(mgr.directory)
    return directory.with_name(directory.name + ".sizes.json")


def restore(mgr: ocp.CheckpointManager, step: int, state, members: int, report: Path) -> tuple[np.ndarray, float]:
    """Load step's state into `state` (in place); return the loop counters and the elapsed seconds saved.

    A damaged checkpoint makes Orbax's reader fail in every array at once, each printing its TensorStore spec (60
    lines) and an asyncio traceback as its task is torn down, then and for a while after. What the restore prints
    goes to `report` instead of the screen and, once one has failed, so does everything this process prints after
    (it trains nothing more: scaling.engine); what it must still say goes to real_stderr()."""
    target = {"state": nnx.to_pure_dict(state), "acc": np.zeros((3, members)), "elapsed": np.zeros(())}
    f = open(report, "wb")  # noqa: SIM115 -- kept open (and stderr on it) if the restore fails
    saved = _redirect_stderr(f)
    hook, sys.unraisablehook = sys.unraisablehook, functools.partial(_unraisable_to, f)
    try:
        restored = mgr.restore(step, args=ocp.args.StandardRestore(target))
    except BaseException:
        gc.collect()  # the failed reads' coroutines report themselves when collected: now, into the report
        _QUIET.setdefault("fd", saved)
        raise
    sys.unraisablehook = hook
    _restore_stderr(saved)
    f.close()
    report.unlink(missing_ok=True)
    nnx.replace_by_pure_dict(state, restored["state"])
    return np.asarray(restored["acc"], np.float64), float(restored["elapsed"])


def _unraisable_to(f, unraisable) -> None:
    """An exception Python cannot raise (a torn-down coroutine's), written to f while it is open (a reader thread
    may report one after the restore is over: that is dropped, being more of the same)."""
    text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
    with contextlib.suppress(ValueError, OSError):
        f.write(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n{text}".encode())


def _redirect_stderr(f) -> int:
    """Standard error, and Orbax's log records (absl's logger, else printed by the job log on standard output), to
    f; returns the real standard error's descriptor."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(f.fileno(), 2)
    absl = logging.getLogger("absl")
    if _ABSL_TO_STDERR not in absl.handlers:
        absl.addHandler(_ABSL_TO_STDERR)
    absl.propagate = False
    return saved


def _restore_stderr(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    absl = logging.getLogger("absl")
    absl.removeHandler(_ABSL_TO_STDERR)
    absl.propagate = True


class _DescriptorTwo(logging.Handler):
    """Writes to descriptor 2 as it is at the time (wherever _redirect_stderr has pointed it)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):
            os.write(2, (self.format(record) + "\n").encode(errors="replace"))


_ABSL_TO_STDERR = _DescriptorTwo()
