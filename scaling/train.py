"""One training run: init or resume, jitted multi-step training, evaluation, divergence abort, checkpoints.

The NNX model and optimizer are split once into (graphdef, state); the jitted function takes the state and a
stack of k batches and runs k optimizer steps in a lax.scan, so Python dispatch is paid once per k steps.
Losses come back to the host one chunk late (after the next chunk is dispatched), which keeps the device busy
while the host checks them for divergence and assembles the next batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from scaling import data as data_lib
from scaling import devices, probes, runs, sizes
from scaling.config import ConfigError, validate
from scaling.model import Transformer, cross_entropy, loss_fn
from scaling.optim import make_optimizer

log = logging.getLogger("scaling.train")
devices.use_every_core()  # before JAX's first operation: one CPU device per core, for data parallelism
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every checkpoint step at INFO


def shape_of(cfg: DictConfig) -> sizes.Shape:
    m = cfg.model
    return sizes.Shape(m.n_layers, m.d_model, m.n_heads, m.d_ff, m.seq_len, m.vocab)


def resolve_steps(train_cfg, n_params: int, tokens_per_step: int) -> tuple[int, str]:
    """Run length in steps. Precedence: train.steps, then train.flops (C = 6 N tokens), then train.tokens, then
    train.tokens_per_param (tokens = ratio x N). The first one set wins; the others are ignored."""
    if train_cfg.steps is not None:
        return int(train_cfg.steps), "train.steps"
    if train_cfg.flops is not None:
        tokens, source = train_cfg.flops / (6 * n_params), "train.flops"
    elif train_cfg.tokens is not None:
        tokens, source = float(train_cfg.tokens), "train.tokens"
    else:
        tokens, source = train_cfg.tokens_per_param * n_params, "train.tokens_per_param"
    return max(1, round(tokens / tokens_per_step)), source


def eval_points(steps: int, n_evals: int, k: int) -> list[int]:
    """Log-spaced step counts at which to evaluate, on multiples of k (chunk boundaries), always ending at steps."""
    raw = np.geomspace(k, max(steps, k), n_evals) if n_evals > 1 else np.array([steps])
    points = {int(min(steps, max(k, round(x / k) * k))) for x in raw}
    points.add(steps)
    return sorted(points)


def chunks(steps: int, points: list[int], k: int) -> list[tuple[int, int]]:
    """(start, n) for each dispatch: n <= k steps, never crossing an evaluation point."""
    out, start = [], 0
    for stop in points:
        while start < stop:
            n = min(k, stop - start)
            out.append((start, n))
            start += n
    return out


class _Stop:
    """Turns SIGTERM / SIGINT into a flag that the loop checks between chunks."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _versions() -> dict:
    import flax
    import orbax.checkpoint

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax": orbax.checkpoint.__version__, "python": sys.version.split()[0]}


def enable_compilation_cache(cache_dir: str | None) -> None:
    """Same-shape runs reuse compiled programs across processes (JAX's persistent compilation cache)."""
    path = data_lib.cache_root(cache_dir) / "jax"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def build(cfg: DictConfig, shape: sizes.Shape, steps: int, peak_lr: float,
          members: list[tuple[int, float]] | None = None):
    """Model, optimizer and the jitted functions: (state, train_chunk, eval_loss, probe_logprobs, lr_fn).

    train_chunk(state, tokens (k, batch, seq+1), active (k,)) -> (state, losses (k,)) runs k AdamW steps in one
    lax.scan; state is donated. eval_loss(state, windows (m, b, seq+1)) -> mean loss in nats per token.

    members: [(seed, peak_lr), ...] packs that many runs into one program (scaling.packing): the state gains a
    leading member axis, the functions are vmapped over it (tokens (members, k, batch, seq+1), losses
    (members, k), eval losses (members,)), each peak rate sits in its optimizer state, and lr_fn is per member.
    """
    def init(seed: int, lr: float):
        model = Transformer(shape, nnx.Rngs(seed), cfg.model.dtype)
        tx, lr_fn = make_optimizer(cfg.optim, lr, steps, peak_in_state=members is not None)
        return (*nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param))), lr_fn)

    if members is None:
        graphdef, state, lr_fn = init(cfg.train.seed, peak_lr)
    else:
        parts = [init(seed, lr) for seed, lr in members]
        graphdef, lr_fn = parts[0][0], [p[2] for p in parts]
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *(p[1] for p in parts))

    def train_chunk(state, tokens, active):
        def step(state, batch):
            model, opt = nnx.merge(graphdef, state)
            loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
            opt.update(model, grads)
            return nnx.state((model, opt)), loss

        def body(state, xs):
            # The final chunk may be shorter than k: its padding steps are skipped. (Selecting between the old
            # and new state after the step would not do: the merged model updates the old state's variables.)
            batch, on = xs
            return jax.lax.cond(on, step, lambda state, _: (state, jnp.zeros((), jnp.float32)), state, batch)

        return jax.lax.scan(body, state, (tokens, active))

    def eval_loss(state, val):
        model, _ = nnx.merge(graphdef, state)

        def one(batch):
            return cross_entropy(model(batch[:, :-1]), batch[:, 1:]).mean()

        return jax.lax.map(one, val).mean()

    def probe_logprobs(state, rows):
        """Log-probability of each next token and whether it is the argmax, (items, length - 1)."""
        model, _ = nnx.merge(graphdef, state)
        logp = jax.nn.log_softmax(model(rows[:, :-1]).astype(jnp.float32))
        lp = jnp.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0]
        return lp, jnp.argmax(logp, -1) == rows[:, 1:]

    if members is not None:
        train_chunk = jax.vmap(train_chunk, in_axes=(0, 0, None))
        eval_loss, probe_logprobs = (jax.vmap(f, in_axes=(0, None)) for f in (eval_loss, probe_logprobs))
    mesh = devices.data_mesh(cfg.train.batch_size, cfg.train.data_parallel)
    if mesh is None:
        return state, jax.jit(train_chunk, donate_argnums=0), jax.jit(eval_loss), jax.jit(probe_logprobs), lr_fn
    # XLA partitions each program over the mesh from these shardings and sums the gradients across devices.
    rep = devices.replicated(mesh)
    state = jax.device_put(state, rep)
    batch_axis = 1 if members is None else 2  # tokens (k, batch, seq + 1), packed (members, k, batch, seq + 1)
    chunk_fn = jax.jit(train_chunk, in_shardings=(rep, devices.split(mesh, batch_axis), rep),
                       out_shardings=rep, donate_argnums=0)
    eval_fn, probe_fn = jax.jit(eval_loss), jax.jit(probe_logprobs)
    return (state, chunk_fn, lambda state, val: eval_fn(state, devices.place(val, mesh, 1)),
            lambda state, rows: probe_fn(state, devices.place(rows, mesh, 0)), lr_fn)


def place_state(cfg: DictConfig, state):
    """A restored state put where build() keeps it: replicated over the data-parallel devices, if any."""
    mesh = devices.data_mesh(cfg.train.batch_size, cfg.train.data_parallel)
    return state if mesh is None else jax.device_put(state, devices.replicated(mesh))


def random_chunk(shape: sizes.Shape, k: int, batch: int, members: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k batches of random tokens (for each of `members` packed runs, if given) and the all-active mask: a
    train_chunk input for throughput measurements."""
    dims = ((members,) if members else ()) + (k, batch, shape.seq_len + 1)
    return np.random.default_rng(0).integers(0, shape.vocab, dims).astype(np.int32), np.ones(k, bool)


def steady_tokens_per_s(step, state, tokens, active, chunks: int = 3, seconds: float = 0.0) -> float:
    """Training tokens/s of an already compiled step function: at least `chunks` dispatches and `seconds`."""
    n, t0 = 0, time.perf_counter()
    while n < chunks or time.perf_counter() - t0 < seconds:
        state, losses = step(state, tokens, active)
        n += 1
        if n % 4 == 0:  # bound the queue of dispatched chunks
            losses.block_until_ready()
    losses.block_until_ready()
    return n * math.prod(tokens.shape[:-1]) * (tokens.shape[-1] - 1) / (time.perf_counter() - t0)


def measure_throughput(cfg: DictConfig, chunks: int = 3) -> float:
    """Steady-state training tokens/s of cfg's shape on this device (random tokens; compile excluded)."""
    enable_compilation_cache(cfg.data.cache_dir)
    shape = shape_of(cfg)
    state, train_chunk, *_ = build(cfg, shape, 1000, 1e-3)
    tokens, active = random_chunk(shape, cfg.train.steps_per_dispatch, cfg.train.batch_size)
    state, losses = train_chunk(state, tokens, active)  # compile
    losses.block_until_ready()
    return steady_tokens_per_s(train_chunk, state, tokens, active, chunks)


@dataclass(frozen=True)
class Fork:
    """Where a run starts when it has no checkpoint of its own: the state another run (a warmup-stable-decay
    trunk, scaling.branching) saved at `step` in <folder>/forks/, and that run's log up to it."""

    folder: Path
    step: int


def run(cfg: DictConfig, folder: Path | None = None, fork: Fork | None = None,
        save_forks: tuple[int, ...] = (), extra_points: tuple[int, ...] = ()) -> dict:
    """Train one run described by cfg; return its summary. Skips a finished run, resumes an interrupted one.

    folder: where the run lives (default runs.run_dir(cfg)); fork: start from another run's saved state;
    save_forks: steps at which to keep a copy of the state for runs branched off this one (also evaluated there,
    as are extra_points).
    """
    try:
        validate(cfg)
    except ValueError as e:  # ConfigError, or a shape error naming its field
        raise ConfigError(str(e)) from None
    folder = folder or runs.run_dir(cfg)
    previous = runs.read_summary(folder)
    if previous and (previous["status"] in runs.FINISHED or
                     (previous["status"] in runs.RETRY_ON_REQUEST and not cfg.rerun_failed)):
        log.info("skip %s: %s", folder, previous["status"])
        return previous
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return _train(cfg, folder, fork, save_forks, extra_points)
    except ConfigError:
        raise
    except Exception as e:  # keep the evidence in the run folder, then let the launcher see the failure
        record_failure(folder, e)
        raise


def record_failure(folder: Path, e: Exception) -> None:
    """Mark a run failed, with the traceback in error.txt (rerun only with rerun_failed=true)."""
    (folder / "error.txt").write_text(traceback.format_exc())
    summary = runs.read_summary(folder) or {}
    summary.update(status="failed", error=f"{type(e).__name__}: {e}")
    runs.write_json_atomic(folder / "summary.json", summary)


def _train(cfg: DictConfig, folder: Path, fork: Fork | None, save_forks: tuple[int, ...],
           extra_points: tuple[int, ...]) -> dict:
    t_start = time.time()
    enable_compilation_cache(cfg.data.cache_dir)
    shape = shape_of(cfg)
    counts = sizes.count_params(shape)
    corpus, unique = training_corpus(cfg, shape)
    tc = cfg.train
    batches = data_lib.Batches(corpus, unique, shape.seq_len, tc.batch_size, tc.seed)
    tokens_per_step = tc.batch_size * shape.seq_len
    steps, length_source = resolve_steps(tc, counts["N"], tokens_per_step)
    k = min(tc.steps_per_dispatch, steps)
    points = sorted(set(eval_points(steps, tc.n_evals, k)) | {p for p in (*save_forks, *extra_points) if p <= steps})
    plan = chunks(steps, points, k)
    peak_lr = cfg.optim.lr if cfg.optim.lr is not None else sizes.default_learning_rate(shape.d_model)

    state, train_chunk, eval_loss, probe_logprobs, lr_fn = build(cfg, shape, steps, peak_lr)
    probe_tasks = probes.tasks(cfg.probes)
    probe_sets = [probes.eval_set(t, cfg.probes.eval_items, shape.seq_len) for t in probe_tasks]

    def probe_metrics() -> dict:
        out = {}
        for es in probe_sets:
            out.update(probes.score(es, *probe_logprobs(state, jnp.asarray(es.rows))))
        return out

    log.info("run %s: N=%s (non-embedding) N_total=%s layers=%d d_model=%d; D=%s; %d steps (%s); lr=%.3g",
             folder.name, f"{counts['N']:,}", f"{counts['N_total']:,}", shape.n_layers, shape.d_model,
             f"{unique:,}", steps, length_source, peak_lr)
    val = eval_batches(corpus, shape, cfg.data.eval_windows)

    # Resume from the latest checkpoint, if any.
    ckpt = _checkpoints(folder / "ckpt")
    forks = _checkpoints(folder / "forks", max_to_keep=None) if save_forks else None
    step, acc_sum, acc_n, elapsed0 = 0, 0.0, 0, 0.0
    metrics_path = folder / "metrics.jsonl"
    source = ckpt if ckpt.latest_step() is not None else None
    if source is None and fork is not None:
        source = _checkpoints(fork.folder / "forks", max_to_keep=None)
        if fork.step not in source.all_steps():
            raise RuntimeError(f"no saved state at step {fork.step} in {fork.folder / 'forks'} to branch from")
        # The branch's log starts with its trunk's, which is its own history up to the fork.
        rows = [r for r in _read_metrics(fork.folder / "metrics.jsonl") if r["step"] <= fork.step]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if source is not None:
        at = source.latest_step() if source is ckpt else fork.step
        target = {"state": nnx.to_pure_dict(state), "acc": np.zeros(2), "elapsed": np.zeros(())}
        restored = source.restore(at, args=ocp.args.StandardRestore(target))
        nnx.replace_by_pure_dict(state, restored["state"])
        state = place_state(cfg, state)
        step = int(at)
        acc_sum, acc_n = float(restored["acc"][0]), int(restored["acc"][1])
        elapsed0 = float(restored["elapsed"])
        log.info("%s %s at step %d", "resumed" if source is ckpt else "branched", folder.name, step)
        if source is not ckpt:
            source.close()
    _truncate_metrics(metrics_path, step)

    summary = {
        "run_id": folder.name, "status": "running", **summary_head(cfg, shape, unique, steps, length_source, corpus),
        "seed": tc.seed, "lr": peak_lr, "resumed_from_step": (step or None) if source is ckpt else None,
        **({"branch_of": fork.folder.name, "fork_step": fork.step} if fork else {}),
    }
    runs.write_json_atomic(folder / "summary.json", summary)

    progress = _Progress(tc.progress, steps, step, tokens_per_step)
    limit = tc.diverge_factor * math.log(shape.vocab)
    st = {"status": "completed", "bad_step": None, "last": None, "sum": acc_sum, "n": acc_n,
          "trained": 0, "first_s": None, "overhead_s": 0.0, "t_progress": time.time()}
    t_loop = t_ckpt = time.time()

    def finish(start: int, n: int, losses) -> bool:
        """Check a finished chunk's losses; log and evaluate at evaluation points. False if diverged."""
        host = np.asarray(losses)[:n]  # waits for that chunk
        if st["first_s"] is None:
            st["first_s"] = time.time() - t_start  # compile and first chunk included
            st["t_first_done"], st["first_n"] = time.time(), n
        bad = np.flatnonzero(~np.isfinite(host) | (host > limit))
        if len(bad):
            st["status"], st["bad_step"] = "diverged", start + int(bad[0]) + 1
            log.error("run %s diverged at step %d: loss %s", folder.name, st["bad_step"], host[bad[0]])
            return False
        st["sum"] += float(host.astype(np.float64).sum())
        st["n"] += n
        st["trained"] += n
        end = start + n
        progress.update(end, float(host[-1]))
        if time.time() - st["t_progress"] > 5:  # for the sweep's progress line, between the sparse log points
            runs.write_json_atomic(folder / "progress.json", {"step": end})
            st["t_progress"] = time.time()
        if end in points:
            t0 = time.time()
            row = {"step": end, "tokens_seen": end * tokens_per_step, "train_loss": st["sum"] / st["n"],
                   "eval_loss": float(eval_loss(state, val)), **probe_metrics(), "lr": float(lr_fn(end - 1)),
                   "tokens_per_s": _throughput(st, tokens_per_step), "elapsed_s": elapsed0 + time.time() - t_loop}
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            progress.log(row)
            st.update(last=row, sum=0.0, n=0)
            st["overhead_s"] += time.time() - t0
        return True

    def save(at_step: int, manager=ckpt) -> None:
        t0 = time.time()
        manager.save(at_step, args=ocp.args.StandardSave({
            "state": nnx.to_pure_dict(state), "acc": np.array([st["sum"], st["n"]], dtype=np.float64),
            "elapsed": np.asarray(elapsed0 + time.time() - t_loop, dtype=np.float64)}), force=True)
        manager.wait_until_finished()
        st["overhead_s"] += time.time() - t0

    pending, end = None, step
    with _Stop() as stop:
        for start, n in (c for c in plan if c[0] >= step):
            tokens = batches.get(start, k)  # host work overlaps the chunk still running on the device
            probes.mix(tokens, start, probe_tasks, cfg.probes.train_fraction, tc.seed)
            active = np.arange(k) < n
            tokens[n:] = 0
            if pending is not None and not finish(*pending):
                break
            pending = None
            state, losses = train_chunk(state, tokens, active)
            end = start + n
            every = tc.checkpoint_every_steps
            due = time.time() - t_ckpt > tc.checkpoint_every_s or bool(every and end % every == 0)
            signalled = stop.signal  # read once: a signal arriving later in this chunk waits for the next
            if end in points or due or signalled:
                if not finish(start, n, losses):
                    break
                if end in save_forks and end not in forks.all_steps():  # saved before a kill: the same state
                    save(end, forks)
                if (due or signalled) and end < steps:
                    save(end)
                    t_ckpt = time.time()
                if signalled:
                    st["status"] = "interrupted"
                    log.warning("run %s interrupted by %s at step %d; checkpoint saved", folder.name, signalled, end)
                    break
            else:
                pending = (start, n, losses)
    progress.close()
    status = st["status"]
    if status == "completed":
        save(steps)
    done_steps = st["bad_step"] - 1 if st["bad_step"] else end
    summary.update({
        "status": status, "diverged_at_step": st["bad_step"],
        **summary_totals(cfg, shape, unique, done_steps, st["last"], probe_tasks),
        **summary_timing(shape, elapsed0 + time.time() - t_loop, st["first_s"], _throughput(st, tokens_per_step)),
    })
    runs.write_json_atomic(folder / "summary.json", summary)
    ckpt.close()
    if forks is not None:
        forks.close()
    log.info("run %s %s: eval loss %s after %d steps, %.1f s", folder.name, status,
             summary["final_eval_loss"], done_steps, summary["wall_s"])
    return summary


def training_corpus(cfg: DictConfig, shape: sizes.Shape):
    """The corpus and D, the unique tokens the run may see; the model's vocabulary must cover the corpus."""
    corpus = data_lib.load_corpus(cfg.data.corpus, cfg.data.val_fraction, cfg.data.cache_dir)
    if corpus.vocab > shape.vocab:
        raise ConfigError(f"model.vocab={shape.vocab} is smaller than the corpus vocabulary ({corpus.vocab})")
    return corpus, int(cfg.data.unique_tokens) if cfg.data.unique_tokens is not None else corpus.n_train


def eval_batches(corpus, shape: sizes.Shape, n_windows: int):
    """The fixed validation windows, in batches of up to 64: the eval_loss input."""
    val = data_lib.eval_windows(corpus, shape.seq_len, n_windows)
    eval_bs = min(64, len(val))
    return jnp.asarray(val[: len(val) // eval_bs * eval_bs].reshape(-1, eval_bs, shape.seq_len + 1))


def summary_head(cfg: DictConfig, shape: sizes.Shape, unique: int, steps: int, length_source: str, corpus) -> dict:
    """What a run's summary says before it trains: shape, counts, data, length, schedule and environment."""
    return {"sweep": cfg.sweep, "model": cfg.model.name, **shape.to_dict(), **sizes.count_params(shape), "D": unique,
            "batch_size": cfg.train.batch_size, "steps": steps, "length_source": length_source,
            "schedule": cfg.optim.name, "flops_per_token": sizes.flops_per_token(shape)["flops"],
            "corpus": corpus.fingerprint, "versions": _versions(), "device": devices.describe(),
            "platform": jax.default_backend(),
            "devices": devices.device_count(cfg.train.batch_size, cfg.train.data_parallel)}


def summary_totals(cfg: DictConfig, shape: sizes.Shape, unique: int, done_steps: int, last: dict | None,
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
        "final_eval_loss": last["eval_loss"] if last else None,
        **({key: v for key, v in last.items() if key.startswith("probe/")} if last else {}),
        **probes.metadata(probe_tasks, cfg.probes.eval_items, cfg.probes.train_fraction),
    }


def summary_timing(shape: sizes.Shape, wall_s: float, first_s: float | None, tokens_per_s: float | None) -> dict:
    """Wall time, time to first step, steady tokens/s and the hardware FLOP/s it means."""
    out = {"wall_s": wall_s, "time_to_first_step_s": first_s, "tokens_per_s": tokens_per_s}
    if tokens_per_s:
        out["hardware_flops_per_s"] = tokens_per_s * sizes.flops_per_token(shape)["flops_hardware"]
    return out


def _throughput(st: dict, tokens_per_step: int) -> float | None:
    """Steady-state tokens/s: the first chunk (compilation) and evaluation/checkpoint time are excluded."""
    if st["first_s"] is None:
        return None
    n = st["trained"] - st["first_n"]
    seconds = time.time() - st["t_first_done"] - st["overhead_s"]
    if n <= 0 or seconds <= 0:
        return None
    return n * tokens_per_step / seconds


def _checkpoints(folder: Path, max_to_keep: int | None = 1) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(folder.absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False))


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a torn last line from a kill
    return rows


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from: they will be written again."""
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in _read_metrics(path) if r.get("step", math.inf) <= step))


class _Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, mode: str, steps: int, start: int, tokens_per_step: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() and not os.environ.get("CI") else "log"
        self.mode, self.bar = mode, None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, leave=False)
        self.step, self.tokens_per_step, self.t0 = start, tokens_per_step, time.time()

    def update(self, step: int, loss: float):
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.step = step

    def log(self, row: dict):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", eval=f"{row['eval_loss']:.3f}",
                                 tok_s=f"{row['tokens_per_s'] or 0:.3g}")
        elif self.mode == "log":
            log.info("step %d  tokens %.3g  train %.4f  eval %.4f  lr %.3g  %s tok/s  %.0f s",
                     row["step"], row["tokens_seen"], row["train_loss"], row["eval_loss"], row["lr"],
                     f"{row['tokens_per_s']:.3g}" if row["tokens_per_s"] else "-", row["elapsed_s"])

    def close(self):
        if self.bar is not None:
            self.bar.close()
