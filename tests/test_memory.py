"""Per-device memory (scaling.memory) against XLA's own buffer assignment, and `scaling plan` refusing a plan that
cannot fit, in one line that says what would."""

import subprocess
import sys

import jax
import pytest

from scaling import devices, memory, program, sizes, throughput
from scaling import plan as plans
from scaling.bench import compiled_bytes


def measured_bytes(cfg) -> tuple[float, float]:
    """XLA's bytes per device for one training step of cfg (arguments, outputs and temporaries, less what is
    donated), and scaling.memory's estimate of the same."""
    shape = plans.shape_of(cfg)
    prog = program.build(cfg, shape, 100, [(0, 1e-3)])
    tokens, active = prog.feed(*throughput.random_chunk(shape, 1, cfg.train.batch_size))
    xla = compiled_bytes(prog.train_chunk.lower(prog.state, tokens, active).compile())
    data, tensor = devices.axis_sizes(devices.mesh(cfg))
    est = memory.estimate(shape, cfg.train.batch_size, data, tensor, cfg.train.fsdp, cfg.model.dtype,
                          cfg.model.remat)
    return xla, est.total


@pytest.mark.parametrize("overrides", [
    ["train.data_parallel=false"],
    ["train.data_parallel=false", "model.remat=true"],
    pytest.param(["train.devices=2", "train.fsdp=true"],
                 marks=pytest.mark.skipif(jax.device_count() < 2, reason="needs two devices (two cores)")),
])
def test_estimate_is_close_to_xla_and_remat_saves_what_it_says(make_cfg, overrides):
    base = ["model=s05", "model.seq_len=64", "train.batch_size=16", "train.steps_per_dispatch=1"]
    xla, est = measured_bytes(make_cfg(*base, *overrides))
    # float32 on XLA:CPU: 0.73 to 0.95 of XLA's figure from s08 to s12 (docs/performance.md)
    assert 0.65 * xla < est < 1.1 * xla, (xla, est)
    if "model.remat=true" in overrides:
        xla_full, est_full = measured_bytes(make_cfg(*base, "train.data_parallel=false"))
        assert xla_full / xla > 2.5 and est_full / est > 2.5, (xla_full, xla, est_full, est)


def test_fsdp_and_tensor_parallelism_divide_the_state():
    s = sizes.ladder_shape("s16")
    one, eight = memory.estimate(s, 64), memory.estimate(s, 64, data=8, fsdp=True)
    assert eight.params == pytest.approx(one.params / 8, rel=0.01)  # every large matrix splits eight ways
    assert eight.adam == 2 * eight.params and eight.grads == eight.params
    tp = memory.estimate(s, 64, tensor=4)
    assert one.params / 4 < tp.params < one.params / 2  # matrices split four ways; embeddings and norms whole
    assert memory.estimate(s, 64, remat=True).activations < one.activations / 5


def run_plan(*args):
    return subprocess.run([sys.executable, "-m", "scaling.cli", "plan", "sweeps/ladder.yaml", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_plan_prints_memory_per_device_and_refuses_what_cannot_fit():
    ok = run_plan("--devices", "8", "--device-memory", "80")
    assert ok.returncode == 0, ok.stderr
    assert "memory per device for 8 devices of 80.0 GiB" in ok.stdout and "GiB/dev" in ok.stdout
    s19 = next(line for line in ok.stdout.splitlines() if " s19 " in line)
    assert 1 < float(s19.split()[-2]) < 80  # s19, fully sharded over 8 devices
    refused = run_plan("--devices", "1", "--device-memory", "16")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "needs" in refused.stderr and "the target is 1 device of 16.0 GiB" in refused.stderr
    assert "it would fit with model.remat=true" in refused.stderr
    bad = run_plan("--devices", "two")
    assert bad.returncode == 2 and "--devices needs a positive integer, got 'two'" in bad.stderr


@pytest.mark.parametrize("override, message", [
    ("train.devices=3", r"train.batch_size \(8\) must split evenly over the 3 devices"),
    ("train.tensor_parallel=0", "train.tensor_parallel must be a positive integer"),
])
def test_mesh_config_errors_are_one_line(make_cfg, override, message):
    from scaling.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(override))


def test_more_devices_than_jax_sees_is_named(make_cfg):
    from scaling.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.devices=8 .* needs 8 devices; JAX sees"):
        devices.mesh(make_cfg("train.devices=8"))


def test_a_packed_cell_is_estimated_for_its_whole_pack(tmp_path):
    from scaling import sweep_plan
    from scaling.sweep_file import load_sweep

    path = tmp_path / "packed.yaml"
    path.write_text("name: packed\ngrids:\n  - model: [s13]\n    train.steps: [10]\n    train.seeds: [[0, 1, 2, 3]]\n")
    rows = sweep_plan.plan(load_sweep(path), [f"results_dir={tmp_path}"])
    assert [r.pack for r in rows] == [4] * 4
    alone, *_ = sweep_plan.plan(load_sweep(path), [f"results_dir={tmp_path}", "train.seeds=null"])
    memory.check(rows + [alone], devices=1, capacity=1e15)
    # four members' states and activations live in one program: four times the memory of a run alone
    assert rows[0].memory.total == pytest.approx(4 * alone.memory.total)
