"""Data parallelism over this machine's local devices: each batch is split between them, gradients are summed.

On a CPU, JAX shows one device by default and parallelises inside each operation with a thread pool. Most of a
small transformer's operations (per-head attention products, layer norms, the AdamW update) are too small to split, so
one core idles much of the step. Showing JAX one CPU device per core and splitting every batch between them keeps
all cores busy: on the 2-core development machine `scaling bench` measured 1.21x to 1.58x the tokens/s from s03
to s12, and 0.75x at s01, whose steps are too short to pay for the synchronisation (README, Performance). A CPU run
asks for that with train.devices=N; by default it computes on one device and one core (scaling.app), and a sweep's
parallel workers keep every core busy instead. On a machine with several GPUs the batch is split over them by
default; with one device nothing changes.

Splitting changes the order of floating-point sums, so losses differ from a single-device run at the level of
float rounding (s02, 49 steps: final evaluation loss 1.6e-7 relative apart), which training amplifies (a 2-device
and a 1-device s02 run of 400 steps ended 1.4e-6 apart; runs of thousands of steps end up to 1.6% apart). A run
is deterministic for a given device count and CPU thread count; both are recorded in its summary, and a resume
under other counts is refused unless train.devices says so (scaling.engine).
"""
from __future__ import annotations

import os
import platform

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling import runs, sizes
from scaling.config import ConfigError


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (narrowed for parallel workers), else every core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_every_core() -> None:
    """One JAX CPU device per core this process may use (its CPU affinity, which scaling.app.pin_run narrows
    for parallel workers). Takes effect only before JAX runs its first operation; a device count given in
    XLA_FLAGS (--xla_force_host_platform_device_count) wins."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    cores = usable_cores()
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX already started (it ran an operation before this call): keep its devices
        pass


def join() -> None:
    """Join the other processes of a run trained by several (before JAX's first operation): under Slurm with
    more than one task (the submitit launcher's tasks_per_node or nodes), where jax.distributed reads the
    coordinator, process count and process id from Slurm's environment, or where JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID say so. The mesh then spans every process's devices; on CPUs the
    collectives go through gloo. Only the first process writes the run folder (scaling.runs.PRIMARY)."""
    count = int(os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("SLURM_NTASKS") or 1)
    if count < 2 or jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(num_processes=count, process_id=int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    runs.PRIMARY = jax.process_index() == 0


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true if it is true in any process: decisions that start collective work (a checkpoint save, a
    stop) must be the same in every process, or the ones that skip it leave the others waiting."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    every = multihost_utils.process_allgather(np.asarray(flags, dtype=np.int32))
    return tuple(bool(x) for x in np.asarray(every).reshape(-1, len(flags)).any(axis=0))


def describe() -> str:
    """The device this process trains on, for summaries and benchmarks. A GPU names itself; JAX calls every CPU
    "cpu", and CPU timings differ across hosts by more than any change worth measuring (two 2-core hosts of this
    project ran the same bench 1.5x to 1.8x apart), so a CPU is named by its model (with family and model numbers,
    which tell generations apart when a hypervisor shortens the name), its widest vector instructions and the cores
    this process may use."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return str(dev.device_kind)
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if key.strip() == "flags":  # the first core's fields are enough
                    break
    except OSError:  # not Linux: the processor name alone
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    flags = set(info.get("flags", "").split())
    isa = next((isa for flag, isa in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON")) if flag in flags),
               None)
    cores = usable_cores()
    return f"CPU {name}" + (f", {isa}" if isa else "") + f", {cores} core{'s' * (cores > 1)}"


def environment(cfg) -> dict:
    """Where a run trains, for its summary: the device, JAX's platform, the devices and the mesh it trains on."""
    data, tensor = axis_sizes(mesh(cfg))
    return {"device": describe(), "platform": jax.default_backend(), "devices": data * tensor,
            "mesh": {"data": data, "tensor": tensor}, "fsdp": bool(cfg.train.fsdp), "processes": jax.process_count(),
            # JAX's CPU thread pools are as large as the process's CPU affinity: with one device the thread count
            # changes the numbers (scaling.app)
            "cpu_threads": usable_cores() if jax.default_backend() == "cpu" else None}


# ---- the mesh and the shardings --------------------------------------------------------------------------------
# A (data, tensor) mesh. Batches are split over "data". Without train.fsdp the state is replicated over "data"
# (plain data parallelism: each device holds it whole and XLA all-reduces the gradients); with it every parameter
# and its Adam moments are split over "data" too (fully-sharded data parallelism, ZeRO-3: XLA all-gathers each
# weight where it is used and reduce-scatters its gradient). "tensor" splits the matrices of every block as
# scaling.sizes.param_table says (Megatron's split). XLA inserts every collective from these shardings: there
# is no hand-written communication here.
AXES = ("data", "tensor")


def mesh(cfg) -> Mesh | None:
    """The mesh a run trains on, or None for one device. train.devices devices, of which train.tensor_parallel form
    the tensor axis; by default, on a CPU in one process one device (its numbers then do not depend on the machine's
    core count or the launcher, scaling.app), otherwise as many as there are, all processes together, that split
    the batch evenly. scaling.config.validate has checked that the numbers divide; here they meet the devices JAX sees."""
    t, every = cfg.train.tensor_parallel, jax.devices()
    if not cfg.train.data_parallel:
        n = t
    elif cfg.train.devices is not None:
        n = cfg.train.devices
    elif every[0].platform == "cpu" and jax.process_count() == 1:
        n = t
    else:
        n = t * max((d for d in range(1, len(every) // t + 1) if cfg.train.batch_size % d == 0), default=1)
    if n > len(every):
        raise ConfigError(f"train.devices={n} (train.tensor_parallel={t}) needs {n} devices; JAX sees "
                          f"{len(every)} ({describe()})")
    if n == 1:
        return None
    return Mesh(np.asarray(every[:n]).reshape(n // t, t), AXES)


def axis_sizes(m: Mesh | None) -> tuple[int, int]:
    """(data, tensor) device counts of a mesh; (1, 1) for one device."""
    return (m.shape["data"], m.shape["tensor"]) if m is not None else (1, 1)


def replicated(m: Mesh) -> NamedSharding:
    return NamedSharding(m, PartitionSpec())


def split(m: Mesh, axis: int) -> NamedSharding:
    """Arrays split along `axis` (their batch axis) over the data axis."""
    return NamedSharding(m, PartitionSpec(*[None] * axis, "data"))


def _role(path) -> str:
    """A state leaf's parameter name in scaling.sizes.param_table ('attn.qkv.kernel', 'embed.embedding', ...), or
    '' for a counter. Adam's moments carry their parameter's path after 'mu' / 'nu'."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    keys = [k for k in keys if k != "value"]
    for i in range(len(keys)):
        rest = keys[i:]
        if rest[:1] == ["blocks"]:
            rest = rest[2:]
        name = ".".join(rest)
        if name in _ROLES:
            return name
    return ""


_ROLES = set(sizes.param_table(sizes.Shape(1, 1, 1, 1, 1)))


def state_shardings(state, m: Mesh, fsdp: bool, shape: sizes.Shape, packed: bool):
    """A NamedSharding for every leaf of a training state (a leading member axis when packed stays whole)."""
    table = sizes.param_table(shape)
    lead = 1 if packed else 0

    def one(path, x):
        role = _role(path)
        if not role or x.ndim <= lead:
            return replicated(m)
        axes = sizes.split_axes(x.shape[lead:], table[role][2], m.shape["data"], m.shape["tensor"], fsdp)
        return NamedSharding(m, PartitionSpec(*[None] * lead, *axes))

    return jax.tree_util.tree_map_with_path(one, state)


def state_bytes(state) -> int:
    """The most bytes of a state that any one of this process's devices holds (FSDP divides it)."""
    held: dict = {}
    for x in jax.tree.leaves(state):
        for shard in x.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values(), default=0)


def put(x, sharding: NamedSharding):
    """x laid out as `sharding` says. With several processes every process holds the same host value and hands
    JAX its own devices' pieces (a device_put cannot reach another process's devices)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(x, m: Mesh | None, axis: int):
    """x split along `axis` over the data axis, or replicated when that axis does not divide evenly; x itself
    without a mesh."""
    if m is None:
        return x
    return put(x, split(m, axis) if x.shape[axis] % m.shape["data"] == 0 else replicated(m))
