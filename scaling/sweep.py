"""`scaling sweep` and `scaling plan`: a sweep file (scaling.sweep_file) -> a validated plan (scaling.sweep_plan)
-> one Hydra multirun per grid -> collect, fits, plots and report.

Every cell is validated first (one clear line for a bad cell, before any compute), then each grid is launched as
`python -m scaling.app -m ...`, so any Hydra launcher works: basic, joblib, submitit_slurm, ray. Finished cells
are skipped and interrupted ones resumed by the runs themselves (scaling.runs), so relaunching a sweep is always
safe. At the end the sweep is collected and analysed (analysis.report).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from scaling import collect, memory, runs, trackers
from scaling.config import ConfigError
from scaling.progress import SWEEP_LOG, Console, SweepProgress
from scaling.sweep_file import as_launched, cells, hydra_value, load_sweep, scaled
from scaling.sweep_plan import PlannedRun, plan, print_plan

USAGE = """usage: scaling {command} SWEEP.yaml [--devices N] [--device-memory GIB] [--scale F] [hydra overrides]{extra}

  scaling plan SWEEP.yaml     every run of the sweep: N, tokens, steps, FLOPs, status (no JAX, no training)
  scaling plan SWEEP.yaml --time   the same with estimated times (measures each shape's throughput here)
  scaling sweep SWEEP.yaml    train what is missing, then collect, fit, plot and report into results/<name>/
  --scale F   every train.flops and train.tokens of the sweep times F, into results/<name>-x<F>/
  Each run's memory per device is estimated (scaling.memory) for this machine, or for --devices devices of
  --device-memory GiB each; a plan that cannot fit is refused in one line that says what would fit."""


def largest_first(g: dict, work: dict) -> dict:
    """The grid with each axis's values ordered by the work of their cells, largest first. Hydra launches cells in
    that order, so parallel launchers (joblib, Slurm, Ray) start the longest cells first and no long cell is
    left running alone at the end (longest-processing-time-first scheduling)."""
    out = {}
    for key, values in g.items():
        def load(v, key=key):
            tag = f"{key}={hydra_value(v)}"
            return sum(w for cell, w in work.items() if tag in cell)

        out[key] = sorted(values, key=load, reverse=True)
    return out


def launch(spec: dict, extra: list[str], rows: list[PlannedRun] | None = None) -> tuple[int, int | None]:
    """One Hydra multirun per grid. Returns (the number of grids whose launch failed, the signal that stopped
    the sweep or None). SIGINT or SIGTERM stops it: see Launcher."""
    failures = 0
    results = runs.sweep_dir(rows[0].cfg) if rows else Path(".")
    console = Console(results / SWEEP_LOG)
    progress = SweepProgress(rows, console=console) if rows else None
    if progress:
        progress.start()
    try:
        with Launcher(console) as launcher:
            for grid in spec["grids"]:
                g, added = as_launched(spec, grid)
                if rows:
                    mine = {tuple(c) for c in cells({**spec, "grids": [grid]}, extra)}
                    g = largest_first(g, {r.cell: r.remaining_work for r in rows if r.cell in mine})
                sweep_args = [f"{k}={','.join(hydra_value(v) for v in vals)}" for k, vals in g.items()]
                cmd = [sys.executable, "-m", "scaling.app", "-m", *spec["overrides"], *added, *sweep_args,
                       f"sweep={spec['name']}", *extra]
                console.log("+ " + " ".join(cmd[1:]))
                failures += launcher.run(cmd) != 0
                if launcher.signal:
                    break
    finally:
        if progress:
            progress.stop.set()
            progress.join()
            progress.final()
        console.close()
    return failures, launcher.signal


class Launcher:
    """Runs each grid's Hydra multirun as a child in this process's group, so `kill -9` of the group still ends
    everything. Training processes record SIGINT and SIGTERM (scaling.signals): on one, each trainer checkpoints at
    its next chunk boundary, marks its run interrupted and returns, cells not yet started return at once, and the
    multirun ends. A Ctrl-C reaches the whole job from the terminal; a signal sent to this process alone is
    forwarded to its descendants. Then no further grid is launched, and what the multirun leaves behind (idle
    workers) is killed; a second signal kills the descendants at once."""

    def __init__(self, console: Console | None = None):
        self.signal, self.child, self.family, self._old = None, None, set(), {}
        self.console = console

    def __enter__(self):
        self._old = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def _forward(self, signum, frame):
        again = self.signal is not None
        self.signal = self.signal or signum
        if self.console is not None:
            self.console.stopping = True
        if self.child is not None:
            self.family |= _descendants(os.getpid())
            _send(self.family, signal.SIGKILL if again else signal.SIGTERM)

    def run(self, cmd: list[str]) -> int:
        if self.signal:
            return 0
        with tempfile.TemporaryDirectory(prefix="scaling-slots-") as slots:  # joblib workers' core slots
            piped = self.console is not None
            self.child = subprocess.Popen(cmd, env={**os.environ, "SCALING_SLOTS": slots},
                                          stdout=subprocess.PIPE if piped else None,
                                          stderr=subprocess.STDOUT if piped else None, text=piped, errors="replace")
            # everything to the sweep's log, warnings and errors to the screen too; read aside, because a launcher's
            # idle workers (joblib's) may hold the pipe open after the multirun has ended
            reader = threading.Thread(target=self._relay, args=(self.child.stdout,), daemon=True) if piped else None
            if reader is not None:
                reader.start()
            try:
                code = self.child.wait()
            finally:
                self.child = None
            if self.signal:
                _send(self.family, signal.SIGKILL)
            if reader is not None:
                reader.join(timeout=5)  # what the multirun printed last
        return code

    def _relay(self, stream) -> None:
        for line in stream:
            self.console.child_line(line.rstrip("\n"))


def _descendants(root: int) -> set[int]:
    """Every process below root (Linux: parents read from /proc/<pid>/stat)."""
    parent = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - out
        out |= frontier
    return out


def _send(pids: set[int], signum: int) -> None:
    """signum to those of pids still in this process's group (a pid reused by another job is left alone)."""
    group = os.getpgid(0)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == group:
                os.kill(pid, signum)


def estimate_times(rows: list[PlannedRun]) -> str:
    """Fill in est_s from each shape's measured throughput on this machine; a pack's (scaling.packing) is measured
    packed, and its time shared among its runs."""
    from scaling import devices, throughput  # deliberately lazy: only `plan --time` starts JAX

    devices.use_every_core()
    rates = {}
    for r in rows:
        key = (r.shape, r.cfg.train.batch_size, r.cfg.model.dtype, r.pack)
        if key not in rates:
            rates[key] = throughput.measure(r.cfg, members=r.pack)  # tokens/s of all the pack's runs together
        r.est_s = r.trained_tokens / rates[key] + 8.0 / r.pack  # + start-up, compile and evaluation
    return devices.describe()


def cli(command: str, argv: list[str]) -> int:
    timed = command == "plan" and "--time" in argv
    argv = [a for a in argv if a != "--time"] if command == "plan" else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE.format(command=command, extra=" [--time]" if command == "plan" else ""))
        return 0
    if not argv or argv[0].startswith("-"):
        print(USAGE.format(command=command, extra="").splitlines()[0], file=sys.stderr)
        return 2
    try:
        argv, target = _target(argv)
        argv, factor = _scale(argv)
        spec = scaled(load_sweep(argv[0]), factor)
        rows = plan(spec, argv[1:])
        described = memory.check(rows, *target)
        if command == "plan":
            device = estimate_times(rows) if timed else ""
            print_plan(spec["name"], rows, described, device)
            return 0
        return _sweep(spec, argv[1:], rows)
    except ConfigError as e:
        print(f"scaling {command}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while planning, collecting or reporting: nothing is training
        print(f"scaling {command}: interrupted; finished runs are kept", file=sys.stderr)
        return 130
    except OSError as e:  # a results folder that cannot be written, a full disk
        print(f"scaling {command}: cannot write {e.filename or 'the results'}: {e.strerror or e}; finished runs "
              "are kept and unfinished ones resume when the same command is relaunched once it is fixed",
              file=sys.stderr)
        return 1


def _target(argv: list[str]) -> tuple[list[str], tuple[int | None, float | None]]:
    """argv without --devices N and --device-memory GIB, and those two values (None where not given)."""
    values, rest, it = {"--devices": None, "--device-memory": None}, [], iter(argv)
    for a in it:
        key, eq, value = a.partition("=")
        if key in values:
            value = value if eq else next(it, "")
            try:
                values[key] = float(value)
                if values[key] <= 0 or (key == "--devices" and not values[key].is_integer()):
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{key} needs a positive {'integer' if key == '--devices' else 'number'}, "
                                  f"got {value!r}") from None
        else:
            rest.append(a)
    devices, gib = values["--devices"], values["--device-memory"]
    return rest, (int(devices) if devices else None, gib * 2**30 if gib else None)


def _scale(argv: list[str]) -> tuple[list[str], float]:
    """argv without --scale F, and F (1 where not given)."""
    rest, factor, it = [], 1.0, iter(argv)
    for a in it:
        key, eq, value = a.partition("=")
        if key != "--scale":
            rest.append(a)
            continue
        value = value if eq else next(it, "")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not 0 < factor < float("inf"):
            raise ConfigError(f"--scale needs a positive number (the factor on every budget), got {value!r}")
    return rest, factor


def writable(folder: Path) -> None:
    """Raise ConfigError, before anything is launched, when results cannot be written into folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write results into {folder}: {e.strerror}; choose another results_dir=... "
                          "or fix its permissions") from None


def _sweep(spec: dict, extra: list[str], rows: list[PlannedRun]) -> int:
    t0 = time.time()
    results = runs.sweep_dir(rows[0].cfg)
    writable(results)
    todo = sum(not runs.is_settled({"status": r.status}, r.cfg.rerun_failed) for r in rows)
    print(f"sweep {spec['name']}: {len(rows)} cells, {len(rows) - todo} already completed, {todo} to run "
          f"-> {results}", flush=True)
    failures, stopped = launch(spec, extra, rows) if todo else (0, None)
    try:
        table, _, problems = collect.collect(results)
    except OSError as e:  # a full disk: the runs are on it, resumable; the tables wait for room
        raise OSError(e.errno, runs.storage_problem(e) or e.strerror or str(e), str(results)) from None
    if stopped:
        counts = table["status"].value_counts() if len(table) else {}
        print(f"scaling sweep: stopped by {signal.Signals(stopped).name}: {counts.get('interrupted', 0)} runs "
              f"checkpointed and marked interrupted, {counts.get('completed', 0)} completed kept in {results}; "
              "relaunch the same command to resume", file=sys.stderr)
        return 128 + stopped
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"sweep {spec['name']}: {collect.summarize(table)} in {time.time() - t0:.0f} s", flush=True)
    unfinished = _unfinished(rows, table)
    storage = [line for line in unfinished if runs.storage_problem(RuntimeError(line))]
    if storage:  # one cause for all of them: say it once
        why = runs.storage_problem(RuntimeError(storage[0]))
        print(f"scaling sweep: {len(unfinished)} of {len(rows)} runs did not finish because {results} cannot be "
              f"written ({why.split(' (')[0]}); finished runs are kept, and the same command resumes the rest once "
              "there is room", file=sys.stderr)
        return 1
    for line in unfinished:
        print(f"  not finished: {line}", file=sys.stderr)
    if unfinished:
        print(f"{len(unfinished)} of {len(rows)} cells did not finish; relaunch the same command to resume them "
              "(failed runs rerun with rerun_failed=true)", file=sys.stderr)
    if not len(table):
        print(f"no run of sweep {spec['name']} left results in {results}; nothing to report", file=sys.stderr)
        return 1
    if not todo and (results / "report.md").exists():
        print(f"nothing trained: {results / 'report.md'} stands (`scaling report {results}` rebuilds it)")
        return 0
    if not (table["status"] == "completed").any():
        print(f"no run of sweep {spec['name']} has completed yet; nothing to report", file=sys.stderr)
        return 1
    from analysis import report  # matplotlib and scipy: loaded only when a sweep is analysed, never to train
    from analysis.table import TableError, TooFewToFit

    try:
        with warnings.catch_warnings(record=True) as caught:  # numerical warnings of far-off fits: to the log
            warnings.simplefilter("always")
            result = report.build(results, quiet=True, n_boot=int(spec.get("n_boot", 1000)), loss=spec.get("loss"),
                                  count=spec.get("count"))
        with open(results / SWEEP_LOG, "a") as f:
            f.writelines(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
    except TooFewToFit as e:  # the runs are trained and collected; there is just no law to fit to so few
        print(f"scaling sweep: no report: {e}", file=sys.stderr)
        return 0
    except TableError as e:
        print(f"scaling sweep: no report: {e}", file=sys.stderr)
        return 1
    from analysis import report_text

    # the answer, as the report opens with it; the rest is in report.md
    print("\n".join(line.replace("**", "").replace("`", "") for line in report_text.answer(result)[2:] if line))
    print(f"report: {results / 'report.md'} (every law, the checks, figures in {results / 'plots'}); everything the "
          f"runs printed: {results / SWEEP_LOG}")
    trackers.log_fits(results, json.loads((results / "fit.json").read_text()))
    return 1 if failures or unfinished else 0


def _unfinished(rows: list[PlannedRun], table) -> list[str]:
    """This sweep's runs that are not completed or diverged: '<run_id> <model> <status>: <error>'."""
    by_id = table.set_index("run_id") if len(table) else None
    out = []
    for r in rows:
        rid = runs.run_id(r.cfg)
        status = by_id.loc[rid, "status"] if by_id is not None and rid in by_id.index else "missing"
        if status not in runs.FINISHED:
            error = by_id.loc[rid].get("error") if status != "missing" else None
            out.append(f"{rid} {r.model} {status}" + (f": {error}" if isinstance(error, str) and error else ""))
    return out
