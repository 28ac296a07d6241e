"""Packing runs that differ only in seed or learning rate into one program (jax.vmap).

With `train.seeds=[0,1,2]` and/or `optim.lrs=[1e-3,3e-3]` one job trains every (seed, lr) pair together: the
model and optimizer states are stacked along a leading member axis and one jitted, vmapped step advances them
all, so small models, whose steps are too short to keep the cores busy, share each dispatch and each matmul
kernel. Each member is written as its own run, the same run (same run id, same data order) as
`train.seed=s optim.lr=l`, equal to it up to float rounding: vmapped kernels sum in another order, and the peak
rate is applied as a separate factor (scaling.optim.make_optimizer). A member that diverges is recorded as
diverged at its first bad step; the others go on. The pack's checkpoint lives in <sweep>/packs/<id>/, so a
killed pack resumes; finished members are left out of a relaunched pack.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from scaling import data as data_lib
from scaling import probes, runs, sizes, train
from scaling.config import ConfigError, validate, with_values

log = logging.getLogger("scaling.packing")


def members(cfg: DictConfig) -> list[DictConfig]:
    """One standalone config per (seed, learning rate) pair of the pack."""
    seeds = list(cfg.train.seeds) if cfg.train.seeds is not None else [cfg.train.seed]
    lrs = list(cfg.optim.lrs) if cfg.optim.lrs is not None else [cfg.optim.lr]
    base = with_values(cfg, **{"train.seeds": None, "optim.lrs": None})
    return [with_values(base, **{"train.seed": int(s), "optim.lr": lr}) for s, lr in itertools.product(seeds, lrs)]


def run(cfg: DictConfig) -> list[dict]:
    """Train the pack's unfinished members together; return every member's summary."""
    try:
        validate(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    everyone = members(cfg)
    skip = runs.FINISHED | (set() if cfg.rerun_failed else runs.RETRY_ON_REQUEST)
    done = {id(m): s for m in everyone if (s := runs.read_summary(runs.run_dir(m))) and s.get("status") in skip}
    todo = [m for m in everyone if id(m) not in done]
    if len(todo) == 1:
        done[id(todo[0])] = train.run(todo[0])
    elif todo:
        try:
            summaries = _train(todo)
        except ConfigError:
            raise
        except Exception as e:  # every member keeps the evidence, as a single run would
            for m in todo:
                train.record_failure(runs.run_dir(m), e)
            raise
        done.update({id(m): s for m, s in zip(todo, summaries)})
    return [done[id(m)] for m in everyone]


def _train(todo: list[DictConfig]) -> list[dict]:
    cfg = todo[0]
    folders = [runs.run_dir(m) for m in todo]
    home = folders[0].parent / "packs" / hashlib.sha256(" ".join(f.name for f in folders).encode()).hexdigest()[:12]
    for f, m in zip(folders, todo):
        f.mkdir(parents=True, exist_ok=True)
        (f / "config.yaml").write_text(OmegaConf.to_yaml(m, resolve=True))
    home.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    train.enable_compilation_cache(cfg.data.cache_dir)
    shape = train.shape_of(cfg)
    counts = sizes.count_params(shape)
    corpus, unique = train.training_corpus(cfg, shape)
    tc = cfg.train
    tokens_per_step = tc.batch_size * shape.seq_len
    steps, length_source = train.resolve_steps(tc, counts["N"], tokens_per_step)
    k = min(tc.steps_per_dispatch, steps)
    points = train.eval_points(steps, tc.n_evals, k)
    pairs = [(m.train.seed, m.optim.lr if m.optim.lr is not None else sizes.default_learning_rate(shape.d_model))
             for m in todo]
    state, train_chunk, eval_loss, probe_logprobs, lr_fns = train.build(cfg, shape, steps, pairs[0][1], pairs)
    batches = [data_lib.Batches(corpus, unique, shape.seq_len, tc.batch_size, seed) for seed, _ in pairs]
    probe_tasks = probes.tasks(cfg.probes)
    probe_sets = [probes.eval_set(t, cfg.probes.eval_items, shape.seq_len) for t in probe_tasks]
    val = train.eval_batches(corpus, shape, cfg.data.eval_windows)
    log.info("pack of %d runs: N=%s layers=%d d_model=%d; %d steps (%s); (seed, lr) %s", len(todo),
             f"{counts['N']:,}", shape.n_layers, shape.d_model, steps, length_source, pairs)

    p = len(todo)
    ckpt = train._checkpoints(home / "ckpt")
    step, sums, ns, bad, elapsed0 = 0, np.zeros(p), np.zeros(p), np.zeros(p, int), 0.0
    if ckpt.latest_step() is not None:
        target = {"state": nnx.to_pure_dict(state), "acc": np.zeros((3, p)), "elapsed": np.zeros(())}
        restored = ckpt.restore(ckpt.latest_step(), args=ocp.args.StandardRestore(target))
        nnx.replace_by_pure_dict(state, restored["state"])
        state = train.place_state(cfg, state)
        step = int(ckpt.latest_step())
        sums, ns, bad = restored["acc"][0], restored["acc"][1], restored["acc"][2].astype(int)
        elapsed0 = float(restored["elapsed"])
        log.info("resumed pack %s at step %d", home.name, step)
    for f in folders:
        train._truncate_metrics(f / "metrics.jsonl", step)
    base = {**train.summary_head(cfg, shape, unique, steps, length_source, corpus),
            "resumed_from_step": step or None, "pack_id": home.name, "pack_size": p}
    summaries = [{"run_id": f.name, "status": "running", **base, "seed": seed, "lr": lr}
                 for f, (seed, lr) in zip(folders, pairs)]
    for f, s in zip(folders, summaries):
        runs.write_json_atomic(f / "summary.json", s)

    limit = tc.diverge_factor * math.log(shape.vocab)
    last: list[dict | None] = [None] * p
    timing = {"first_s": None, "t_first_done": None, "first_n": 0, "trained": 0, "overhead_s": 0.0}
    t_loop = t_ckpt = time.time()

    def save(at: int) -> None:
        t0 = time.time()
        ckpt.save(at, args=ocp.args.StandardSave({
            "state": nnx.to_pure_dict(state), "acc": np.stack([sums, ns, bad]).astype(np.float64),
            "elapsed": np.asarray(elapsed0 + time.time() - t_loop, dtype=np.float64)}), force=True)
        ckpt.wait_until_finished()
        timing["overhead_s"] += time.time() - t0

    status, end = "completed", step
    with train._Stop() as stop:
        for start, n in (c for c in train.chunks(steps, points, k) if c[0] >= step):
            tokens = np.stack([b.get(start, k) for b in batches])
            for member, (seed, _) in zip(tokens, pairs):
                probes.mix(member, start, probe_tasks, cfg.probes.train_fraction, seed)
            tokens[:, n:] = 0
            state, losses = train_chunk(state, tokens, np.arange(k) < n)
            host = np.asarray(losses)[:, :n]
            end = start + n
            if timing["first_s"] is None:
                timing.update(first_s=time.time() - t_start, t_first_done=time.time(), first_n=n)
            timing["trained"] += n
            for i in np.flatnonzero(bad == 0):
                wrong = np.flatnonzero(~np.isfinite(host[i]) | (host[i] > limit))
                if len(wrong):
                    bad[i] = start + int(wrong[0]) + 1
                    log.error("run %s diverged at step %d", folders[i].name, bad[i])
            sums += host.astype(np.float64).sum(1)
            ns += n
            if end in points:
                t0 = time.time()
                evals = np.asarray(eval_loss(state, val))
                scored = [{} for _ in range(p)]
                for es in probe_sets:
                    lp, hit = probe_logprobs(state, jnp.asarray(es.rows))
                    for i in range(p):
                        scored[i].update(probes.score(es, lp[i], hit[i]))
                tok_s = train._throughput(timing, tokens_per_step * p)
                for i in np.flatnonzero(bad == 0):
                    row = {"step": end, "tokens_seen": end * tokens_per_step, "train_loss": sums[i] / ns[i],
                           "eval_loss": float(evals[i]), **scored[i], "lr": float(lr_fns[i](end - 1)),
                           "tokens_per_s": tok_s and tok_s / p, "elapsed_s": elapsed0 + time.time() - t_loop}
                    with (folders[i] / "metrics.jsonl").open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    last[i] = row
                log.info("step %d  eval %s  %s tok/s (all runs)", end, np.round(evals, 4), f"{tok_s or 0:.3g}")
                sums[:], ns[:] = 0.0, 0
                timing["overhead_s"] += time.time() - t0
            if bad.all():
                break
            signalled = stop.signal  # read once, as in scaling.train
            if (time.time() - t_ckpt > tc.checkpoint_every_s or signalled) and end < steps:
                save(end)
                t_ckpt = time.time()
            if signalled:
                status = "interrupted"
                log.warning("pack %s interrupted by %s at step %d; checkpoint saved", home.name, signalled, end)
                break
    if status == "completed" and not bad.all():
        save(steps)
    ckpt.close()
    tok_s = train._throughput(timing, tokens_per_step * p)
    for i, s in enumerate(summaries):
        s.update({
            "status": "diverged" if bad[i] else status, "diverged_at_step": int(bad[i]) or None,
            **train.summary_totals(cfg, shape, unique, bad[i] - 1 if bad[i] else end, last[i], probe_tasks),
            **train.summary_timing(shape, elapsed0 + time.time() - t_loop, timing["first_s"], tok_s and tok_s / p),
        })
        runs.write_json_atomic(folders[i] / "summary.json", s)
    log.info("pack %s %s: eval losses %s", home.name, status, [s["final_eval_loss"] for s in summaries])
    return summaries
