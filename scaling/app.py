"""The Hydra application: one call of `task` trains one grid cell, under any launcher.

JAX starts only inside `task`, after the worker has pinned itself to its cores: JAX sizes its CPU thread pools
from the process's CPU affinity when it starts, and XLA_FLAGS / OMP_NUM_THREADS do not limit them. That is why
the training modules are imported there and not at the top of this file.
"""

from __future__ import annotations

import fcntl
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

register()
log = logging.getLogger("scaling")
_SLOT = None  # the lock file that holds this process's core slot for its lifetime


def pin_worker(n_workers: int) -> list[int] | None:
    """Pin this process to a disjoint share of the available cores, claiming a free slot by file lock."""
    global _SLOT
    if _SLOT is not None or n_workers < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, len(cpus) // n_workers)
    # The sweep hands its workers a folder it deletes at the end; a plain `scaling train -m` shares one per parent.
    folder = os.environ.get("SCALING_SLOTS") or os.path.join(tempfile.gettempdir(), f"scaling-slots-{os.getppid()}")
    os.makedirs(folder, exist_ok=True)
    for slot in range(n_workers):
        f = open(os.path.join(folder, str(slot)), "w")  # noqa: SIM115 -- held open for the process lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _SLOT = f
        mine = cpus[(slot * per) % len(cpus):][:per]
        os.sched_setaffinity(0, mine)
        return mine
    return None


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
    if cfg.pin_cpus:
        mine = pin_worker(workers)
        if mine:
            log.info("worker %d pinned to cores %s", os.getpid(), mine)
    signals.record_signals()  # from here on a stop signal is acted on at the next chunk boundary
    if signals.received():  # a worker told to stop does not start another run
        return {"status": "interrupted", "error": f"not started: {signals.received()}"}
    from scaling import devices, train  # deliberately lazy: JAX starts here, after pinning (module docstring)

    devices.use_every_core()
    devices.join()  # a run trained by several processes (Slurm tasks, or JAX_COORDINATOR_ADDRESS): one mesh
    try:
        result = train.run_cell(cfg)
    except ConfigError as e:
        print(f"scaling: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a results folder that cannot be written, a full disk: the run is resumable
        print(f"scaling: {e.strerror or e}: {e.filename or runs.run_dir(cfg)}; finished runs are kept, relaunch "
              "once it is fixed", file=sys.stderr)
        if not multirun:
            raise SystemExit(1) from None
        return {"status": "failed", "error": str(e)}
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
