"""Bytes per device of a training step, before any compute: the state (parameters, gradients, AdamW's two
moments, all float32), the transient weight copies (bfloat16 casts, FSDP's gathered block) and the activations
kept for the backward pass at the configured batch. Pure arithmetic on the shape (scaling.sizes), so `scaling plan`
can refuse a plan that cannot fit before anything starts.

Activations of one block, per sequence of s tokens (width h, a heads, e bytes per compute element: 4 for
float32, 2 for bfloat16, t-way tensor parallelism), counting what this model keeps for its backward pass (no
dropout, so no masks):
    the float32 residual entering each of the two layer norms          8 s h
    their normalised values (float32), kept by the layer norms' VJP    8 s h
    the two layer-norm outputs, cast for the matmuls                   2 e s h
    q, k and v; the attention output; the MLP's pre- and post-GELU,
    and GELU's inner tanh                                              (3 + 1 + 4 + 4 + 4) e s h / t
    the unnormalised attention output (float32)                        4 s h / t
    the attention probabilities (float32, a per head)                  4 a s^2 / t
This is Korthikanti et al. (2022)'s count (34 s h + 5 a s^2 bytes in 16-bit with dropout) redone for this model.
With rematerialisation (model.remat) a block keeps only its float32 input (4 s h) and one block's activations
are rebuilt at a time. The logits (float32, vocabulary-wide) are counted three times: logits, their softmax and
its gradient. XLA's own buffer assignment (`scaling bench`, tests/test_memory.py) is the measurement this
estimate is checked against.
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass

from scaling import plan as plans
from scaling import sizes
from scaling.config import ConfigError

GiB = 2**30
BLOCK_PARTS = ("attn.", "mlp.", "norm1.", "norm2.")  # the parameters of one block (scaling.sizes.param_table)


@dataclass(frozen=True)
class Memory:
    params: float  # bytes per device
    grads: float
    adam: float
    weight_copies: float  # bfloat16 casts and FSDP's all-gathered block, transient
    activations: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.adam + self.weight_copies + self.activations

    def describe(self) -> str:
        return (f"{self.total / GiB:.2f} GiB per device (parameters {self.params / GiB:.2f}, gradients "
                f"{self.grads / GiB:.2f}, Adam {self.adam / GiB:.2f}, weight copies {self.weight_copies / GiB:.2f}, "
                f"activations {self.activations / GiB:.2f})")


def per_device_params(shape: sizes.Shape, data: int, tensor: int, fsdp: bool) -> tuple[float, float]:
    """(parameters each device holds under the split of scaling.sizes.split_axes, those of one block unsplit over
    the data axis: what FSDP gathers at a time)."""
    held = block = 0.0
    for name, (dims, copies, tensor_axis) in sizes.param_table(shape).items():
        axes = sizes.split_axes(dims, tensor_axis, data, tensor, fsdp)
        split = {"data": data, "tensor": tensor, None: 1}
        held += copies * math.prod(dims) / math.prod(split[a] for a in axes)
        if name.startswith(BLOCK_PARTS):
            block += math.prod(dims) / math.prod(tensor if a == "tensor" else 1 for a in axes)
    return held, block


def estimate(shape: sizes.Shape, batch_size: int, data: int = 1, tensor: int = 1, fsdp: bool = False,
             dtype: str = "float32", remat: bool = False, members: int = 1) -> Memory:
    """Bytes per device of one training step of `members` packed runs, the batch split over `data` devices."""
    e = 2 if dtype == "bfloat16" else 4
    held, block = per_device_params(shape, data, tensor, fsdp)
    copies = (2 * held if e == 2 else 0) + (4 * block if fsdp and data > 1 else 0)
    b, s, h, a, t = batch_size / data, shape.seq_len, shape.d_model, shape.n_heads, tensor
    per_block = b * (s * h * (16 + 2 * e + (16 * e + 4) / t) + 4 * a * s * s / t)
    kept = shape.n_layers * 4 * b * s * h + per_block if remat else shape.n_layers * per_block
    logits = 3 * 4 * b * s * shape.vocab
    return Memory(4 * held * members, 4 * held * members, 8 * held * members, copies * members,
                  (kept + logits) * members)


def fits(cfg, devices: int, capacity: float, members: int = 1) -> tuple[Memory, str | None]:
    """The estimate of a run trained in a pack of `members` on `devices` devices of `capacity` bytes each, and
    None if it fits, else one line naming what would (FSDP, then rematerialisation, then tensor parallelism, then
    a smaller batch), as config overrides."""
    shape = plans.shape_of(cfg)
    tc = cfg.train
    n = tc.devices or devices if tc.data_parallel else tc.tensor_parallel
    base = {"fsdp": bool(tc.fsdp), "tensor": tc.tensor_parallel, "remat": bool(cfg.model.remat),
            "batch": tc.batch_size}

    def est(o):
        return estimate(shape, o["batch"], max(1, n // o["tensor"]), o["tensor"], o["fsdp"], cfg.model.dtype,
                        o["remat"], members)

    mem = est(base)
    if mem.total <= capacity:
        return mem, None
    tries = [{"fsdp": True}, {"fsdp": True, "remat": True}]
    tries += [{"fsdp": True, "remat": True, "tensor": t} for t in (2, 4, 8) if t <= n and n % t == 0]
    for change in tries:
        o = {**base, **change}
        if est(o).total <= capacity:
            keys = {"fsdp": "train.fsdp", "remat": "model.remat", "tensor": "train.tensor_parallel"}
            fix = " ".join(f"{keys[k]}={str(v).lower()}" for k, v in change.items() if base[k] != v)
            return mem, f"{fix} ({est(o).total / GiB:.2f} GiB)"
    o = {**base, "fsdp": True, "remat": True}
    per_sequence = est(o).activations / o["batch"]
    room = capacity - est({**o, "batch": 0}).total
    also = " ".join(f"{k}=true" for k, b in (("train.fsdp", base["fsdp"]), ("model.remat", base["remat"])) if not b)
    if room > 0 and room // per_sequence >= 1:
        return mem, f"{also + ' and ' if also else ''}a batch of at most {int(room // per_sequence)} sequences"
    return mem, f"more devices: the state alone needs {est({**o, 'batch': 0}).total / GiB:.2f} GiB on each of {n}"


def machine() -> tuple[int, float, str]:
    """(devices, bytes each, a description) of this machine, without starting JAX: its GPUs as nvidia-smi lists
    them, else one device per usable core (as scaling.devices.use_every_core sets up) sharing the RAM."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()
        if out:
            mib, name = out[0].split(",", 1)
            return len(out), float(mib) * 2**20, f"{len(out)} x {name.strip()} ({float(mib) / 1024:.1f} GiB each)"
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cores, ram / cores, f"{cores} CPU devices sharing {ram / GiB:.0f} GiB ({ram / cores / GiB:.1f} GiB each)"


def check(rows, devices: int | None = None, capacity: float | None = None) -> str:
    """Set each planned run's `memory` (its estimate) and raise ConfigError, in one line, for the first that cannot
    fit on `devices` devices of `capacity` bytes (default: this machine, scaling.memory.machine); return the
    target's description."""
    found, each, what = machine()
    devices, capacity = devices or found, capacity or each
    if devices != found or capacity != each:
        what = f"{devices} device{'s' * (devices > 1)} of {capacity / GiB:.1f} GiB"
    for i, r in enumerate(rows, 1):
        r.memory, fix = fits(r.cfg, devices, capacity, r.pack)
        if fix is not None:
            raise ConfigError(f"run {i} ({r.model}, batch {r.cfg.train.batch_size}) needs {r.memory.describe()}; "
                              f"the target is {what}; it would fit with {fix}")
    return what
