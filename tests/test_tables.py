"""Tables that cannot be fitted: one line naming the file and the problem, exit 2; predict refuses what fit
refuses."""

import os
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "scaling.cli", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("name, content", [
    ("empty.csv", b""),
    ("binary.csv", os.urandom(3000)),
    ("prose.csv", b"hello there\nthis is not\n a table, really \"quoted\n"),
    ("broken.parquet", b"PAR1 this is not parquet"),
])
def test_an_unreadable_table_is_one_line_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for command in (["fit"], ["predict", "--flops", "1e15"], ["plot"], ["emergence"]):
        r = run(command[0], str(path), *command[1:])
        assert r.returncode == 2, (command, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "not a readable table" in lines[0], (command, r.stderr)


def test_predict_refuses_a_table_the_joint_law_cannot_be_fitted_to(tmp_path):
    path = tmp_path / "one_row.csv"
    path.write_text("N,D,loss\n1e6,2e7,3.1\n")
    fit = run("fit", str(path))  # too small for any law: one line, exit 2, with each law's reason
    assert fit.returncode == 2 and len(fit.stderr.strip().splitlines()) == 1, fit.stderr
    assert "too few to fit any law (chinchilla: needs at least 6 runs with 2 or more distinct N and D" in fit.stderr
    for args in (["--flops", "1e15"], ["--n", "1e6", "--d", "2e7"]):
        r = run("predict", str(path), *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "needs at least 6 runs with 2 or more distinct N and D; the table has 1 run(s)" in r.stderr
