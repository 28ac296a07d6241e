"""What a run's summary.json says: its plan and environment before it trains, its accounting after.

The FLOP conventions are scaling.sizes'; the environment (device, JAX platform, devices) is passed in by the
engine, so this module needs no JAX.
"""

from __future__ import annotations

import sys
from importlib import metadata

from omegaconf import DictConfig

from scaling import config, probes, sizes
from scaling.plan import RunPlan


def versions() -> dict:
    """The library versions that can change a result."""
    out = {name: metadata.version(dist) for name, dist in
           (("jax", "jax"), ("flax", "flax"), ("optax", "optax"), ("orbax", "orbax-checkpoint"))}
    return {**out, "python": sys.version.split()[0]}


def head(cfg: DictConfig, plan: RunPlan, unique: int, corpus, environment: dict) -> dict:
    """What a run's summary says before it trains: shape, counts, data (the corpus's fingerprint, the tokenizer's
    name and vocabulary), length, schedule and environment."""
    shape = plan.shape
    fp = corpus.fingerprint
    return {"sweep": cfg.sweep, "model": cfg.model.name, **shape.to_dict(), **sizes.count_params(shape),
            "D": unique, "tokenizer": fp.get("tokenizer"), "tokenizer_vocab": corpus.vocab,
            "batch_size": cfg.train.batch_size, "steps": plan.steps,
            "length_source": plan.length_source, "schedule": cfg.optim.name,
            "flops_per_token": sizes.flops_per_token(shape)["flops"], "corpus": fp,
            "versions": versions(), "results_version": config.RESULTS_VERSION, **environment}


def totals(cfg: DictConfig, shape: sizes.Shape, unique: int, done_steps: int, last: dict | None,
           probe_tasks) -> dict:
    """A run's accounting after `done_steps` steps: tokens, epochs, FLOPs under each convention (scaling.sizes),
    final losses and probe metrics (from `last`, its last log row)."""
    tokens_seen = done_steps * cfg.train.batch_size * shape.seq_len
    per_token = sizes.flops_per_token(shape)
    return {
        "steps_done": int(done_steps), "tokens_seen": tokens_seen, "unique_tokens_seen": min(unique, tokens_seen),
        "epochs": tokens_seen / unique,
        **{key: v * tokens_seen for key, v in per_token.items() if key != "flops_hardware"},
        "final_train_loss": last["train_loss"] if last else None,
        "final_eval_loss": last["eval_loss"] if last else None,  # nats per token
        "final_eval_bpb": last.get("eval_bpb") if last else None,  # bits per byte
        "final_eval_step": last["step"] if last else None,  # below steps_done when a run stopped between evaluations
        **({key: v for key, v in last.items() if key.startswith("probe/")} if last else {}),
        **probes.metadata(probe_tasks, cfg.probes.eval_items, cfg.probes.train_fraction),
    }


def timing(shape: sizes.Shape, wall_s: float, first_s: float | None, tokens_per_s: float | None) -> dict:
    """Wall time, time to first step, steady tokens/s and the hardware FLOP/s it means."""
    out = {"wall_s": wall_s, "time_to_first_step_s": first_s, "tokens_per_s": tokens_per_s}
    if tokens_per_s:
        out["hardware_flops_per_s"] = tokens_per_s * sizes.flops_per_token(shape)["flops_hardware"]
    return out
