"""A quiet console: `scaling sweep` on a terminal (a pseudo-terminal here) shows a few lines from start to report,
its live display redrawn in place, while <sweep>/sweep.log keeps everything the training processes printed."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after `raw`: newlines, carriage returns, and the two sequences the live display
    uses (cursor up n lines to their start, clear to the end of the screen)."""
    lines, row, col = [""], 0, 0
    for m in re.finditer(r"\x1b\[(\d*)([A-Za-z])|\r|\n|[^\x1b\r\n]+", raw):
        t = m.group(0)
        if t == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif t == "\r":
            col = 0
        elif m.group(2) == "F":
            row, col = max(0, row - int(m.group(1) or 1)), 0
        elif m.group(2) == "J":
            del lines[row + 1:]
            lines[row] = lines[row][:col]
        elif m.group(2) is None:
            lines[row] = lines[row][:col] + t + lines[row][col + len(t):]
            col += len(t)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def run_in_terminal(cmd: list[str], env: dict, timeout: float = 600) -> tuple[int, str]:
    main, child = pty.openpty()
    p = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the child exited
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    os.close(main)
    return p.wait(timeout=60), out.decode(errors="replace")


def test_a_sweep_on_a_terminal_is_a_few_lines_and_its_log_keeps_everything(tmp_path, cache_dir):
    sweep = tmp_path / "quiet.yaml"
    sweep.write_text("name: quiet\nn_boot: 20\noverrides: [launcher=joblib, model.seq_len=32, train.batch_size=8, "
                     "train.n_evals=3, data.eval_windows=32]\ngrids:\n  - model: [s01, s01a, s01b]\n"
                     "    train.steps: [16, 32]\n  - model: [s02]\n    train.steps: [24]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"SCALING_CACHE": str(cache_dir)}
    code, raw = run_in_terminal([sys.executable, "-m", "scaling.cli", "sweep", str(sweep),
                                 f"results_dir={tmp_path / 'results'}", f"data.cache_dir={cache_dir}"], env)
    shown = screen(raw)
    assert code == 0, "\n".join(shown)
    assert len(shown) <= 12, "\n".join(shown)  # header, the display's last state, the end line, the answer, report
    assert shown[0].startswith("sweep quiet: 7 cells") and any(s.startswith("report: ") for s in shown)
    assert not any("[HYDRA]" in s or "libtpu" in s or "[INFO]" in s for s in shown)
    assert raw.count("\n") > len(shown)  # the live display was redrawn in place
    log = (tmp_path / "results" / "quiet" / "sweep.log").read_text()
    assert "[HYDRA]" in log and "pinned to cores" in log and log.count("completed: eval loss") == 7


def test_warnings_and_errors_of_the_training_processes_still_reach_the_screen(tmp_path, capsys):
    from scaling.progress import Console

    console = Console(tmp_path / "sweep.log")
    lines = ["[2026-12-07 06:00:46,670][jax._src.xla_bridge][INFO] - Unable to initialize backend 'tpu'",
             "[2026-12-07 06:00:50,545][HYDRA] Launching jobs, sweep output dir : x",
             "[2026-12-07 06:01:00,000][scaling.train][ERROR] - run 1d076f9a52a6 diverged at step 12: loss nan",
             "[2026-12-07 06:01:00,000][scaling.train][WARNING] - abc interrupted by SIGTERM at step 8",
             "scaling: config error: model.d_model must be a positive integer, got -1",
             "Traceback (most recent call last):", "ValueError: bad"]
    for line in lines:
        console.child_line(line)
    console.close()
    assert capsys.readouterr().err.splitlines() == lines[2:]
    assert (tmp_path / "sweep.log").read_text().splitlines() == lines


def test_a_sweep_log_on_a_full_disk_loses_its_lines_but_not_the_screen(capsys):
    # /dev/full refuses every write with ENOSPC, as a results folder on a full filesystem does
    from scaling.progress import Console

    console = Console(Path("/dev/full"))
    console.child_line("[2026-12-07 06:01:00,000][scaling.train][INFO] - step 8")
    console.child_line("scaling: run abc interrupted: no space left on device")
    console.close()
    assert capsys.readouterr().err.splitlines() == ["scaling: run abc interrupted: no space left on device"]


def test_after_a_run_meets_a_full_disk_the_aftermath_stays_in_the_log(tmp_path, capsys):
    # a failed checkpoint write leaves writer threads that report the same failure later, in tracebacks
    from scaling.progress import Console

    console = Console(tmp_path / "sweep.log")
    lines = ["scaling: run abc cannot be written: no space left on device (/r/ckpt/80); it is interrupted",
             "Future exception was never retrieved", "Traceback (most recent call last):",
             '  File "/x/concurrent/futures/thread.py", line 58, in run', "OSError: [Errno 28] No space left on device",
             "scaling: run def cannot be written: no space left on device (/r/ckpt/40); it is interrupted"]
    for line in lines:
        console.child_line(line)
    console.close()
    assert capsys.readouterr().err.splitlines() == lines[:1]
    assert (tmp_path / "sweep.log").read_text().splitlines() == lines
