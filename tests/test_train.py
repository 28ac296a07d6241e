import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from interrupt import StopAfter  # tests/interrupt.py

from scaling import engine, plan, program, runs, throughput, train
from scaling.config import ConfigError


def metrics(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_records_everything(make_cfg):
    cfg = make_cfg("train.steps=40", "data.unique_tokens=5000")
    s = train.run(cfg)
    assert s["status"] == "completed" and s["steps_done"] == 40
    rows = metrics(runs.run_dir(cfg))
    assert rows[-1]["step"] == 40 and rows[0]["eval_loss"] > rows[-1]["eval_loss"] + 0.5
    assert s["final_eval_loss"] < np.log(256) - 1.0
    # Accounting: 40 steps x 8 x 32 tokens over D = 5000 unique tokens.
    assert s["tokens_seen"] == 40 * 8 * 32 and s["epochs"] == pytest.approx(s["tokens_seen"] / 5000)
    assert s["unique_tokens_seen"] == 5000
    assert s["flops"] == 6 * s["N"] * s["tokens_seen"]
    assert s["corpus"]["content_sha256"] and s["versions"]["jax"]
    # JAX calls every CPU "cpu"; the summary names the host's CPU and the cores the run could use.
    cores = len(os.sched_getaffinity(0))
    assert s["device"].startswith("CPU ") and s["device"].endswith(f", {cores} core{'s' * (cores > 1)}")
    assert (runs.run_dir(cfg) / "config.yaml").exists()


def test_finished_run_is_skipped(make_cfg):
    cfg = make_cfg("train.steps=8")
    first = train.run(cfg)
    again = train.run(cfg)
    assert again["wall_s"] == first["wall_s"]  # read back, not retrained


def test_padding_steps_of_a_short_last_chunk_change_nothing(make_cfg):
    # 22 steps in chunks of 4 end with a chunk of 2 real steps and 2 padding steps; in chunks of 2 nothing is padded.
    base = ["train.steps=22", "train.n_evals=2", "data.unique_tokens=3000"]
    padded = train.run(make_cfg(*base, "train.steps_per_dispatch=4", "sweep=padded"))
    exact = train.run(make_cfg(*base, "train.steps_per_dispatch=2", "sweep=exact"))
    assert padded["final_eval_loss"] == pytest.approx(exact["final_eval_loss"], rel=1e-5)

    cfg = make_cfg()
    shape = plan.shape_of(cfg)
    prog = program.build(cfg, shape, 100, [(cfg.train.seed, 1e-3)])
    state, train_chunk = prog.state, prog.train_chunk
    before = [np.asarray(x) for x in jax.tree.leaves(state)]
    tokens, _ = throughput.random_chunk(shape, 4, 8)
    state, _ = train_chunk(state, tokens, np.zeros(4, bool))
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, jax.tree.leaves(state)))


@pytest.mark.skipif(jax.local_device_count() < 2, reason="data parallelism needs two local devices (two cores)")
def test_data_parallel_run_matches_one_device(make_cfg):
    base = ["train.steps=24", "data.unique_tokens=3000"]
    split = train.run(make_cfg(*base, "sweep=split", "train.devices=2"))
    whole = train.run(make_cfg(*base, "sweep=whole", "train.data_parallel=false"))
    assert split["devices"] == 2 and whole["devices"] == 1
    assert split["run_id"] == whole["run_id"]  # a performance setting, not part of the run's identity
    # The same run up to the order of floating-point sums.
    assert split["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], rel=1e-4)


@pytest.mark.parametrize("stop_after", [1, 4])
def test_resume_equals_uninterrupted(make_cfg, tmp_path, monkeypatch, stop_after):
    base = ["train.steps=30", "train.n_evals=6", "data.unique_tokens=3000"]
    straight = make_cfg(*base, "sweep=straight")
    train.run(straight)
    cfg = make_cfg(*base, "sweep=interrupted")
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(stop_after))
        s = train.run(cfg)
    assert s["status"] == "interrupted" and s["steps_done"] < 30
    resumed = train.run(cfg)
    assert resumed["status"] == "completed"
    a, b = metrics(runs.run_dir(straight)), metrics(runs.run_dir(cfg))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    # Bitwise on CPU; GPU reductions are not deterministic run to run, so there the last bits may differ.
    rel = 0 if jax.default_backend() == "cpu" else 1e-5
    for ra, rb in zip(a, b):
        assert ra["eval_loss"] == pytest.approx(rb["eval_loss"], rel=rel, abs=0)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=rel, abs=0)


def test_divergence_stops_the_run_and_keeps_the_log(make_cfg):
    cfg = make_cfg("optim.lr=1000", "train.steps=60", "optim.warmup_frac=0")
    s = train.run(cfg)
    assert s["status"] == "diverged" and 1 <= s["diverged_at_step"] <= 60
    assert s["steps_done"] == s["diverged_at_step"] - 1


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be a positive integer, got 0"),
    ("train.batch_size=-3", "train.batch_size must be a positive integer"),
    ("data.unique_tokens=1e12", "data.unique_tokens=1e\\+12 exceeds the corpus training split"),
    ("optim.name=adam", "optim.name must be one of cosine, wsd, constant"),
    ("model.n_heads=5", "divisible by model.n_heads"),
    ("probes.tasks=[division]", r"probes.tasks: unknown task\(s\) \['division'\]; allowed: addition, copy, modular"),
    ("probes.train_fraction=1.0", r"probes.train_fraction must be in \[0, 1\), got 1.0"),
    ("probes.copy_length=0", "probes.copy_length must be a positive integer"),
])
def test_config_errors_name_the_field(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        train.run(make_cfg(override))


def test_cli_config_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "train", "train.steps=-1",
                        f"results_dir={tmp_path}"], check=False, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "scaling: config error: train.steps must be a positive integer, got -1"
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "train", "model=s99"], check=False, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "s99" in r.stderr and "s01" in r.stderr


def test_run_length_precedence():
    from omegaconf import OmegaConf

    t = OmegaConf.create({"steps": None, "flops": 6e9, "tokens": 1e9, "tokens_per_param": 20})
    assert plan.resolve_steps(t, 1000, 100) == (10_000, "train.flops")
    t.flops = None
    assert plan.resolve_steps(t, 1000, 100) == (10_000_000, "train.tokens")
    t.tokens = None
    assert plan.resolve_steps(t, 1000, 100) == (200, "train.tokens_per_param")
    t.steps = 7
    assert plan.resolve_steps(t, 1000, 100) == (7, "train.steps")


def test_user_corpus_run(make_cfg, text_corpus):
    s = train.run(make_cfg(f"data.corpus={text_corpus}", "data.val_fraction=0.2", "train.steps=16"))
    assert s["status"] == "completed" and s["corpus"]["files"] == 40


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_master_weights(make_cfg):
    import jax.numpy as jnp

    base = ["train.steps=40", "data.unique_tokens=5000"]
    cfg = make_cfg(*base, "model.dtype=bfloat16", "sweep=bf16")
    prog = program.build(cfg, plan.shape_of(cfg), 40, [(0, 1e-2)])
    assert {x.dtype for x in jax.tree.leaves(prog.state) if x.ndim} == {jnp.dtype(jnp.float32)}  # weights, Adam
    bf16, fp32 = train.run(cfg), train.run(make_cfg(*base, "sweep=fp32"))
    assert bf16["final_eval_loss"] < 0.8 * np.log(256)  # it learns
    assert bf16["final_eval_loss"] == pytest.approx(fp32["final_eval_loss"], rel=0.03)
    assert bf16["final_eval_loss"] != fp32["final_eval_loss"]  # and it did compute in bfloat16
