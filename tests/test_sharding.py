"""Training over device meshes (scaling.devices): data parallel, fully sharded, tensor parallel, across two
processes, and a checkpoint that moves from 4 devices to 2. Each case trains the same tiny run for 50 steps and
must match the run on one device within 1e-5 relative, at every logged step."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sharded_runs  # tests/sharded_runs.py

from scaling import runs

TESTS = Path(__file__).parent
REL = 1e-5


def close(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key in ("eval", "train"):
        assert a[key] == pytest.approx(b[key], rel=REL, abs=0), key


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, cache_dir):
    """Every mesh of tests/sharded_runs.py, trained in one process that sees 8 CPU devices."""
    out = tmp_path_factory.mktemp("meshes")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(TESTS / "sharded_runs.py"), str(out), str(cache_dir)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=TESTS.parent, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_mesh_equals_one_device(eight_devices):
    one = eight_devices["one"]
    assert one["eval"][-1] < one["eval"][0] - 1.0  # it learns: 50 steps take it well below the start
    # replicated data parallelism over 2 devices: tests/test_train.py
    expected = {"fsdp2": (2, 1), "fsdp4": (4, 1), "fsdp8": (8, 1), "fsdp4_tp2": (4, 2), "remat": (1, 1)}
    for name, (data, tensor) in expected.items():
        run = eight_devices[name]
        assert (run["mesh"]["data"], run["mesh"]["tensor"]) == (data, tensor), name
        assert run["devices"] == data * tensor and run["run_id"] == one["run_id"], name
        close(run, one)
    # Fully sharded, each device holds an eighth of the state (plus the few leaves too small to split).
    assert eight_devices["fsdp8"]["state_bytes"] < eight_devices["one"]["state_bytes"] / 7
    # 4 x 2: matrices split 8 ways, embeddings (no tensor axis) 4 ways
    assert eight_devices["fsdp4_tp2"]["state_bytes"] < eight_devices["one"]["state_bytes"] / 5


def test_checkpoint_saved_on_four_devices_resumes_on_two(eight_devices):
    run = eight_devices["reshard_4_to_2"]
    assert run["status"] == ["interrupted", "completed"] and 0 < run["stopped_at"] < 50
    assert run["resumed_from_step"] == run["stopped_at"] and run["devices"] == 2
    close(run, eight_devices["one"])


def test_two_processes_joined_by_jax_distributed_equal_one(eight_devices, tmp_path, cache_dir):
    """Two `scaling train` processes of 2 CPU devices each train one run on a 4-device mesh (gloo collectives);
    only the first writes the run folder."""
    base = [*sharded_runs.BASE, f"results_dir={tmp_path / 'results'}", f"data.cache_dir={cache_dir}"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "scaling.cli", "train", *base, "sweep=two", "train.devices=4", "train.fsdp=true",
             f"hydra.run.dir={tmp_path / f'hydra{i}'}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    folder = tmp_path / "results" / "two" / eight_devices["one"]["run_id"]
    s = runs.read_summary(folder)
    assert s["status"] == "completed" and s["processes"] == 2 and s["devices"] == 4
    assert s["mesh"] == {"data": 4, "tensor": 1}
    close(sharded_runs.losses(folder), eight_devices["one"])
    assert not list(tmp_path.glob("results/two/*/*.tmp.*"))  # nothing half-written by the second process
