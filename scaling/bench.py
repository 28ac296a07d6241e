"""`scaling bench`: training throughput of the size ladder on the current device, against the device's peak.

    scaling bench [--sizes s01,s04,s08,s12] [--batch 32] [--dtype float32|bfloat16] [--seconds 5]
                  [--pack P] [--peak GFLOPS] [--out results/bench] [overrides ...]

Per size: steady-state tokens/s (compilation excluded; several optimizer steps per dispatch and the mesh exactly as
in training (scaling.devices): one device on a CPU unless `train.devices=N` splits the batch over N),
achieved FLOP/s under the hardware convention of scaling.sizes (6 N + attention + tied output projection per
token; 6 N alone is the `model_gflops` column), compile time cold and from JAX's persistent cache,
time to first step (model init + compile + first dispatch), the fraction of the device's peak, and on a GPU
the model FLOP utilisation (MFU: hardware FLOP/s over the datasheet's dense bfloat16 peak, whatever the compute
dtype). Memory per device three ways: XLA's buffer assignment for one dispatch, scaling.memory's estimate, and on
a GPU the allocator's peak.

The peak: on a GPU, the datasheet's dense figure for the compute dtype (TF32 tensor cores for float32, since XLA
runs float32 matmuls on them by default); on a CPU it is measured here, as the best of a large float32 matmul
(through XLA and through numpy's BLAS) and an FMA-bound elementwise loop, on every core. Writes bench.csv and bench.md.
Never run by the tests: it is a measurement, and two shared cores make timings noisy.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from scaling import devices, memory, program, sizes, throughput
from scaling import plan as plans
from scaling.config import ConfigError
from scaling.sweep_plan import compose

# Dense peak FLOP/s from NVIDIA datasheets (SXM parts), by device-kind substring and compute dtype.
GPU_PEAKS = {
    "H200": {"float32": 494.7e12, "bfloat16": 989.4e12},
    "H100 PCIe": {"float32": 378.0e12, "bfloat16": 756.0e12},
    "H100": {"float32": 494.7e12, "bfloat16": 989.4e12},
    "A100": {"float32": 156.0e12, "bfloat16": 312.0e12},
    "L40S": {"float32": 183.0e12, "bfloat16": 362.0e12},
    "L4": {"float32": 60.0e12, "bfloat16": 121.0e12},
}


def _best_seconds(fn, *args, repeats: int = 5) -> float:
    """Best wall time of fn(*args) over `repeats` calls after a warm-up; fn may return JAX or numpy arrays."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def measure_cpu_peak() -> dict:
    """FLOP/s of large float32 matmuls (through XLA, and through numpy's BLAS, the best this CPU's matmul
    libraries reach) and of an FMA-bound loop (16 dependent x*a+b per element over 128k independent elements,
    400 times, so the FMA units never wait on latency). The peak is the best of the three."""
    n = 4096
    a = jnp.ones((n, n), jnp.float32)
    xla = 2 * n**3 / _best_seconds(jax.jit(lambda x: x @ x), a, repeats=3)
    b = np.ones((n, n), np.float32)
    blas = 2 * n**3 / _best_seconds(lambda x: x @ x, b, repeats=3)

    width, unroll, trips = 131072, 16, 400

    @jax.jit
    def fma(x):
        def body(_, x):
            for _ in range(unroll):
                x = x * 0.999 + 0.001
            return x

        return jax.lax.fori_loop(0, trips, body, x)

    x = jnp.linspace(0, 1, width, dtype=jnp.float32).reshape(8, -1)
    loop = 2 * width * unroll * trips / _best_seconds(fma, x)
    return {"matmul": xla, "blas_matmul": blas, "fma_loop": loop, "peak": max(xla, blas, loop)}


def device_peak(dtype: str, override_gflops: float | None) -> tuple[float, str]:
    if override_gflops:
        return override_gflops * 1e9, "given (--peak)"
    dev = jax.devices()[0]
    if dev.platform == "gpu":
        for key, peaks in GPU_PEAKS.items():
            if key in dev.device_kind:
                return peaks[dtype], f"datasheet {key} dense {dtype}"
        raise SystemExit(f"scaling bench: no datasheet peak for {dev.device_kind!r}; pass --peak GFLOPS")
    p = measure_cpu_peak()
    return p["peak"], (f"measured: XLA matmul {p['matmul'] / 1e9:.1f}, BLAS matmul {p['blas_matmul'] / 1e9:.1f}, "
                       f"FMA loop {p['fma_loop'] / 1e9:.1f} GFLOP/s")


def bench_size(cfg, seconds: float, pack: int = 1) -> dict:
    shape = plans.shape_of(cfg)
    k, b = cfg.train.steps_per_dispatch, cfg.train.batch_size
    t0 = time.perf_counter()
    prog = program.build(cfg, shape, 10_000, [(seed, 1e-4) for seed in range(pack)])
    state, train_chunk = prog.state, prog.train_chunk
    tokens, active = prog.feed(*throughput.random_chunk(shape, k, b, pack if pack > 1 else None))
    t_compile = time.perf_counter()
    step = train_chunk.lower(state, tokens, active).compile()
    compile_cold = time.perf_counter() - t_compile
    state, losses = step(state, tokens, active)
    losses.block_until_ready()
    first = time.perf_counter() - t0  # init + cold compile + the first k steps
    jax.clear_caches()  # the next compile is served by the persistent cache the cold one filled
    t_compile = time.perf_counter()
    train_chunk.lower(state, tokens, active).compile()
    compile_cached = time.perf_counter() - t_compile
    tok_s = throughput.steady_tokens_per_s(step, state, tokens, active, chunks=3, seconds=seconds)
    per_token = sizes.flops_per_token(shape)
    data, tensor = devices.axis_sizes(devices.mesh(cfg))
    estimate = memory.estimate(shape, b, data, tensor, cfg.train.fsdp, cfg.model.dtype, cfg.model.remat, pack)
    stats = jax.local_devices()[0].memory_stats() or {}  # a GPU's allocator counts; a CPU has none
    return {"model": cfg.model.name, "N": sizes.count_params(shape)["N"], "n_layers": shape.n_layers,
            "d_model": shape.d_model, "batch_size": b, "seq_len": shape.seq_len, "dtype": cfg.model.dtype,
            "steps_per_dispatch": k, "pack": pack,
            "devices": data * tensor, "tokens_per_s": tok_s,
            "hardware_gflops": tok_s * per_token["flops_hardware"] / 1e9,
            "model_gflops": tok_s * 6 * sizes.count_params(shape)["N"] / 1e9, "compile_s": compile_cold,
            "compile_cached_s": compile_cached, "time_to_first_step_s": first,
            "memory_xla_gib": compiled_bytes(step) / memory.GiB, "memory_estimate_gib": estimate.total / memory.GiB,
            "memory_peak_gib": stats.get("peak_bytes_in_use", float("nan")) / memory.GiB}


def compiled_bytes(compiled) -> float:
    """Bytes per device XLA's buffer assignment gives a compiled step: arguments, outputs and temporaries, less
    the donated buffers that outputs reuse (NaN where the backend does not say)."""
    ma = compiled.memory_analysis()
    if ma is None:
        return float("nan")
    return ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes


def _shown(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)  # NaN: not measured on this device


def to_markdown(rows: list[dict], device: str, peak_note: str) -> str:
    head = ("| size | N | layers x width | devices | tokens/s | hardware GFLOP/s | 6N GFLOP/s | fraction of peak | "
            "MFU (bf16 datasheet) | GiB per device (XLA / estimate / peak used) | compile s (cold / cached) | "
            "first step s |")
    lines = [f"Device: {device}. Peak: {peak_note}.", "", head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['model']} | {r['N']:.2e} | {r['n_layers']} x {r['d_model']} | {r['devices']} | "
                     f"{r['tokens_per_s']:,.0f} | "
                     f"{r['hardware_gflops']:.1f} | {r['model_gflops']:.1f} | {r['fraction_of_peak']:.1%} | "
                     f"{_shown(r['mfu_bf16'], '.1%')} | {_shown(r['memory_xla_gib'], '.3g')} / "
                     f"{_shown(r['memory_estimate_gib'], '.3g')} / {_shown(r['memory_peak_gib'], '.3g')} | "
                     f"{r['compile_s']:.1f} / {r['compile_cached_s']:.1f} | {r['time_to_first_step_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scaling bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="s01,s04,s08,s10,s12", help="comma-separated ladder sizes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--seconds", type=float, default=5.0, help="steady-state timing per size")
    p.add_argument("--pack", type=int, default=1,
                   help="runs packed into one vmapped program (scaling.packing); tokens/s counts all of them")
    p.add_argument("--peak", type=float, default=None, help="peak GFLOP/s to compare with (default: see above)")
    p.add_argument("--out", default="results/bench")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every size, e.g. train.steps_per_dispatch=8")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)


    devices.use_every_core()  # before the peak measurement starts JAX

    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="scaling-bench-jax-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        cfgs = [compose([f"model={s}", f"train.batch_size={a.batch}", f"model.dtype={a.dtype}", *a.overrides])
                for s in a.sizes.split(",")]
    except Exception as e:  # noqa: BLE001 -- Hydra names the bad override or size
        raise ConfigError(f"scaling bench: {e}") from None
    dev = jax.devices()[0]
    device = f"{devices.describe()} ({jax.local_device_count()} JAX device(s))"
    peak, note = device_peak(a.dtype, a.peak)
    bf16_peak = next((p["bfloat16"] for key, p in GPU_PEAKS.items() if key in dev.device_kind), float("nan")) \
        if dev.platform == "gpu" else float("nan")
    print(f"{device}; peak {peak / 1e9:,.1f} GFLOP/s ({note})", flush=True)
    rows = []
    for cfg in cfgs:
        r = bench_size(cfg, a.seconds, a.pack)
        # A CPU peak is measured on all cores at once; a GPU's datasheet peak is per device.
        total = peak * (r["devices"] if dev.platform == "gpu" else 1)
        r.update(device=device, peak_gflops=total / 1e9, fraction_of_peak=r["hardware_gflops"] * 1e9 / total,
                 mfu_bf16=r["hardware_gflops"] * 1e9 / (bf16_peak * r["devices"]))
        rows.append(r)
        print(f"  {r['model']}: {r['tokens_per_s']:,.0f} tokens/s, {r['hardware_gflops']:.1f} GFLOP/s "
              f"({r['fraction_of_peak']:.1%} of peak), compile {r['compile_s']:.1f} s", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "bench.csv", index=False)
    md = to_markdown(rows, device, note)
    (out / "bench.md").write_text(md)
    print(md)
    print(f"wrote {out / 'bench.csv'} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
