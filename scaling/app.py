"""The Hydra application: one call of `task` trains one grid cell, under any launcher.

JAX starts only inside `task`, after the process has pinned itself to its cores: JAX sizes its CPU thread pools
from the process's CPU affinity when it starts, and XLA_FLAGS / OMP_NUM_THREADS do not limit them. That is why
the training modules are imported there and not at the top of this file.

On a CPU the numbers a run produces depend on how many devices split its batch and how many threads each has (the
order of float sums; chaotic training amplifies a difference in the 7th digit to 1% within a few thousand steps).
So on a CPU every run computes on train.devices cores (default 1), one JAX device per core, whatever the launcher
and however many cores the machine has: a cell trained by the basic launcher, by a joblib worker or by `scaling
train` gives the same numbers, bitwise. Parallel workers take disjoint cores where there are enough.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import signal
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from scaling import runs, signals
from scaling.config import ConfigError, register
from scaling.lock import LockLost

register()
log = logging.getLogger("scaling")
logging.raiseExceptions = False  # a log file that cannot be written (a full disk) is not worth a traceback per line


_SLOT = None  # the lock file that holds this process's core slot for its lifetime
_STORAGE: list[str] = []  # the storage failure this process met, if any: it starts no further run


def pin_run(cores: int) -> list[int] | None:
    """Pin this process to `cores` cores, claiming a free slot of that many by file lock (one held for the process's
    life), or sharing one when every slot is taken; the first pin holds. None where affinity cannot be set."""
    global _SLOT
    if _SLOT is not None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, min(cores, len(cpus)))
    slots = max(1, len(cpus) // per)
    # A sweep hands its workers a folder it deletes at the end; other processes share one per user.
    folder = os.environ.get("SCALING_SLOTS") or os.path.join(tempfile.gettempdir(), f"scaling-slots-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    chosen = os.getpid() % slots  # every slot taken: share one
    for slot in range(slots):
        f = open(os.path.join(folder, f"{per}-{slot}"), "w")  # noqa: SIM115 -- held open for the process lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _SLOT, chosen = f, slot
        break
    mine = cpus[chosen * per:(chosen + 1) * per]
    os.sched_setaffinity(0, mine)
    return mine


def cpu_only() -> bool:
    """Whether JAX will train on the CPU, asked before it starts: JAX_PLATFORMS says so, or no accelerator plugin
    (CUDA, ROCm, TPU) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower().replace(" ", "")
    if platforms:
        return platforms == "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return False
    return not any(ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")) and \
        importlib.util.find_spec("jax_plugins") is None


def _hydra_job() -> tuple[int, bool]:
    """(parallel workers of this launcher, whether this is a multirun); (1, False) outside a Hydra job."""
    try:
        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra job
        return 1, False
    launcher, workers = hc.launcher, 1
    if "joblib" in str(launcher.get("_target_", "")):
        n = launcher.get("n_jobs", 1)
        workers = os.cpu_count() if n in (-1, None) else int(n)
    return workers, hc.mode == RunMode.MULTIRUN


def task(cfg: DictConfig) -> dict | list | None:
    workers, multirun = _hydra_job()
    if workers > 1:
        # Parallel workers share one GPU, if there is one: by default each JAX process would claim 75% of it.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if cfg.pin_cpus and cpu_only():
        mine = pin_run(cfg.train.devices or cfg.train.tensor_parallel)
        if mine:
            log.info("process %d pinned to cores %s", os.getpid(), mine)
    signals.record_signals()  # from here on a stop signal is acted on at the next chunk boundary
    if signals.received():  # a worker told to stop does not start another run
        return {"status": "interrupted", "error": f"not started: {signals.received()}"}
    if _STORAGE:  # the results cannot be written: a worker that met that starts no other run
        return {"status": "interrupted", "error": f"not started: {_STORAGE[0]}"}
    from scaling import devices, train  # deliberately lazy: JAX starts here, after pinning (module docstring)

    devices.use_every_core()
    devices.join()  # a run trained by several processes (Slurm tasks, or JAX_COORDINATOR_ADDRESS): one mesh
    try:
        result = train.run_cell(cfg)
    except ConfigError as e:
        print(f"scaling: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except LockLost as e:  # another process trains the run now: this one leaves it alone
        print(f"scaling: {e}", file=sys.stderr)
        if not multirun:
            raise SystemExit(1) from None
        return {"status": "lock lost", "error": str(e)}
    except (runs.StorageError, OSError) as e:  # a full disk, lost permissions, a damaged checkpoint: resumable
        why = str(e) if isinstance(e, runs.StorageError) else \
            f"{runs.storage_problem(e) or e.strerror or e}: {e.filename or runs.run_dir(cfg)}; finished runs are " \
            "kept, and the same command resumes the others once it is fixed"
        _STORAGE.append(why)
        from scaling import checkpoints

        print(f"scaling: {why}", file=checkpoints.real_stderr(), flush=True)
        if not multirun:
            raise SystemExit(1) from None
        return {"status": "interrupted", "error": why}
    except Exception as e:  # recorded in the run folder (error.txt); in a multirun the other cells go on
        log.error("run failed: %s: %s (see %s/error.txt)", type(e).__name__, e, runs.run_dir(cfg))
        if not multirun:
            raise
        return {"status": "failed", "error": str(e)}
    if signals.received():  # checkpointed and marked interrupted
        log.warning("interrupted by %s; checkpoint saved, relaunch to resume", signals.received())
        if not multirun:  # a multirun's other cells return at once instead (raising would kill a pool worker)
            raise SystemExit(128 + signal.Signals[signals.received()].value)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | list | None:
    return task(cfg)


if __name__ == "__main__":
    signals.record_signals()  # a multirun's launcher outlives a stop signal: its cells stop, then it ends
    main()
