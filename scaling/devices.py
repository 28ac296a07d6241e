"""Data parallelism over this machine's local devices: each batch is split between them, gradients are summed.

On a CPU, JAX shows one device by default and parallelises inside each operation with a thread pool. Most of a
small transformer's operations (per-head attention products, layer norms, the AdamW update) are too small to split, so
one core idles much of the step. Showing JAX one CPU device per core this process may use, and splitting every
batch between them, keeps all cores busy: on the 2-core development machine `scaling bench` measured 1.21x to 1.58x
the tokens/s from s03 to s12, and 0.75x at s01, whose steps are too short to pay for the synchronisation (README,
Performance). On a machine with several GPUs the same code splits the batch
over them; with one device nothing changes.

Splitting changes the order of floating-point sums, so losses differ from a single-device run at the level of
float rounding (s02, 49 steps: final evaluation loss 1.6e-7 relative apart); a run is deterministic for a given
device count.
"""

from __future__ import annotations

import os
import platform

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (narrowed for parallel workers), else every core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_every_core() -> None:
    """One JAX CPU device per core this process may use (its CPU affinity, which scaling.app.pin_worker narrows
    for parallel workers). Takes effect only before JAX runs its first operation; a device count given in
    XLA_FLAGS (--xla_force_host_platform_device_count) wins."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    cores = usable_cores()
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX already started (it ran an operation before this call): keep its devices
        pass


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


def environment(batch_size: int, data_parallel: bool = True) -> dict:
    """Where a run trains, for its summary: the device, JAX's platform and the devices each batch is split over."""
    return {"device": describe(), "platform": jax.default_backend(), "devices": device_count(batch_size, data_parallel)}


def data_mesh(batch_size: int, enabled: bool = True) -> Mesh | None:
    """The devices a batch of this size is split over: as many local devices as divide it evenly; None for one."""
    local = jax.local_devices()
    n = max(d for d in range(1, len(local) + 1) if batch_size % d == 0) if enabled else 1
    return Mesh(local[:n], ("batch",)) if n > 1 else None


def device_count(batch_size: int, enabled: bool = True) -> int:
    mesh = data_mesh(batch_size, enabled)
    return mesh.size if mesh else 1


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split(mesh: Mesh, axis: int) -> NamedSharding:
    """Arrays split along `axis` (their batch axis) over the mesh."""
    return NamedSharding(mesh, PartitionSpec(*[None] * axis, "batch"))


def place(x, mesh: Mesh | None, axis: int):
    """x split along `axis` over the mesh, or replicated when that axis does not divide evenly; x itself without a
    mesh."""
    if mesh is None:
        return x
    return jax.device_put(x, split(mesh, axis) if x.shape[axis] % mesh.size == 0 else replicated(mesh))
