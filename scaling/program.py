"""The compiled program of 1 to P runs of one shape: model and optimizer state, and the jitted functions.

The NNX model and optimizer are split once into (graphdef, state); the jitted train_chunk takes the state and
a stack of k batches and runs k optimizer steps in a lax.scan, so Python dispatch is paid once per k steps.
Packed runs (scaling.packing) stack their states along a leading member axis and vmap every function over it.
With several devices, XLA partitions each program over the run's mesh (scaling.devices): data parallel, fully
sharded (train.fsdp) and tensor parallel (train.tensor_parallel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from omegaconf import DictConfig

from scaling import data, devices, sizes
from scaling.model import Transformer, cross_entropy, loss_fn
from scaling.optim import make_optimizer


@dataclass
class Program:
    """state: the model and optimizer state (a member axis first when packed).
    train_chunk(state, tokens (k, batch, seq+1), active (k,)) -> (state, losses (k,)): k AdamW steps, state
        donated; packed: tokens (members, k, batch, seq+1), losses (members, k).
    eval_loss(state, windows (m, b, seq+1)) -> mean loss in nats per token (packed: one per member).
    probe_logprobs(state, rows) -> log-probability of each next token and whether it is the argmax.
    lr_fns: the learning rate at each step, one function per member.
    place(state) -> the state (restored from a checkpoint) on the run's mesh: replicated over the data axis, or
        sharded (train.fsdp, train.tensor_parallel); unchanged on one device.
    feed(tokens, active) -> the two host arrays laid out as train_chunk expects (with several processes a jitted
        function takes only arrays already spread over the global mesh)."""

    state: object
    train_chunk: Callable
    eval_loss: Callable
    probe_logprobs: Callable
    lr_fns: list[Callable]
    place: Callable
    feed: Callable


def enable_compilation_cache(cache_dir: str | None) -> None:
    """Same-shape runs reuse compiled programs across processes (JAX's persistent compilation cache)."""
    jax.config.update("jax_compilation_cache_dir", str(data.cache_root(cache_dir) / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _functions(graphdef):
    """The pure functions of one run's state, before jit and vmap."""
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

    return train_chunk, eval_loss, probe_logprobs


def build(cfg: DictConfig, shape: sizes.Shape, steps: int, members: list[tuple[int, float]]) -> Program:
    """The program for members [(seed, peak_lr), ...]: one member is a plain run, several are packed into one
    program, each peak rate held in its optimizer state (scaling.optim.make_optimizer)."""
    packed = len(members) > 1

    def init(seed: int, lr: float):
        model = Transformer(shape, nnx.Rngs(seed), cfg.model.dtype, cfg.model.remat)
        tx, lr_fn = make_optimizer(cfg.optim, lr, steps, peak_in_state=packed)
        return (*nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param))), lr_fn)

    parts = [init(seed, lr) for seed, lr in members]
    graphdef, lr_fns = parts[0][0], [p[2] for p in parts]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *(p[1] for p in parts)) if packed else parts[0][1]
    train_chunk, eval_loss, probe_logprobs = _functions(graphdef)
    if packed:
        train_chunk = jax.vmap(train_chunk, in_axes=(0, 0, None))
        eval_loss, probe_logprobs = (jax.vmap(f, in_axes=(0, None)) for f in (eval_loss, probe_logprobs))
    mesh = devices.mesh(cfg)
    if mesh is None:
        return Program(state, jax.jit(train_chunk, donate_argnums=0), jax.jit(eval_loss), jax.jit(probe_logprobs),
                       lr_fns, lambda state: state, lambda tokens, active: (tokens, active))
    # XLA partitions each program over the mesh from these shardings and inserts the collectives (scaling.devices).
    rep = devices.replicated(mesh)
    state_sh = devices.state_shardings(state, mesh, cfg.train.fsdp, shape, packed)
    batch_axis = 2 if packed else 1  # tokens (k, batch, seq + 1), packed (members, k, batch, seq + 1)
    chunk_fn = jax.jit(train_chunk, in_shardings=(state_sh, devices.split(mesh, batch_axis), rep),
                       out_shardings=(state_sh, rep), donate_argnums=0)
    # Evaluations come back replicated, so that every process can read them.
    eval_fn, probe_fn = jax.jit(eval_loss, out_shardings=rep), jax.jit(probe_logprobs, out_shardings=rep)

    def place(state):
        return jax.tree.map(devices.put, state, state_sh)

    return Program(place(state), chunk_fn, lambda state, val: eval_fn(state, devices.place(val, mesh, 1)),
                   lambda state, rows: probe_fn(state, devices.place(rows, mesh, 0)), lr_fns, place,
                   lambda tokens, active: (devices.place(tokens, mesh, batch_axis), devices.put(active, rep)))
