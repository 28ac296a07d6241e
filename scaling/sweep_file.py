"""Sweep files: what they may say, and the grid cells they expand to.

A sweep file (YAML) names the results folder, fixed settings and one or more grids; each grid is a Cartesian
product that Hydra's sweeper expands, and the union of the grids is the sweep:

    name: quick                      # results/<name>/
    n_boot: 1000                     # bootstrap resamples for the fits at the end (optional)
    overrides:                       # Hydra overrides applied to every cell (and may pick the launcher)
      - launcher=joblib
      - train.batch_size=32
    grids:
      - model: [s01, s02, s03]
        train.tokens: [2.5e5, 1e6]
    wsd_branches: false              # true: per grid point, the train.tokens values come from one warmup-
                                     # stable-decay trunk with a cooldown branched off at each (scaling.branching)
    pack: false                      # true: a grid's train.seed and optim.lr values train as one vmapped
                                     # program per grid point (scaling.packing)
    loss: loss                       # the runs-table column the report fits: loss (nats per token) or bpb (bits
                                     # per byte, to compare tokenizers)
    count: 6ND                       # how the report counts compute: 6ND, 6N_total_D or hardware
                                     # (analysis.table.COUNTS)
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from scaling.config import ConfigError

PACKED_KEYS = {"train.seed": "train.seeds", "optim.lr": "optim.lrs"}


# The keys a sweep file may hold, with what each must be.
SCHEMA = {"name": "a name (the results folder)", "n_boot": "a positive integer",
          "overrides": "a list of Hydra overrides", "grids": "a list of maps of config key -> list of values",
          "wsd_branches": "true or false", "pack": "true or false", "loss": "loss or bpb",
          "count": "6ND, 6N_total_D or hardware"}


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; every mistake is one ConfigError line naming the key or line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {p} does not exist; sweep files live in sweeps/ (e.g. sweeps/quick.yaml)")
    try:
        spec = OmegaConf.to_container(OmegaConf.create(p.read_text() or "{}"), resolve=True)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # OmegaConf: a scalar file, a bad interpolation
        raise ConfigError(f"{p}: cannot read it as a sweep file: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict) or "grids" not in spec:
        raise ConfigError(f"{p}: a sweep file needs 'grids:' (a list of key: [values] maps)")
    _check(p, spec)
    spec.setdefault("name", p.stem)
    spec.setdefault("overrides", [])
    for i, g in enumerate(spec["grids"]):
        for key, values in g.items():
            if values == []:
                raise ConfigError(f"{p}: grids[{i}].{key} is an empty list, which makes no cell; a grid needs at "
                                  "least one value for each key")
            if not isinstance(values, list):
                g[key] = [values]
    return spec


def _check(p: Path, spec: dict) -> None:
    for key in spec:
        if key not in SCHEMA:
            close = difflib.get_close_matches(str(key), SCHEMA, n=1)
            raise ConfigError(f"{p}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; allowed: {', '.join(SCHEMA)}")
    ok = {"name": lambda v: isinstance(v, str) and v and "/" not in v,
          "n_boot": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
          "overrides": lambda v: isinstance(v, list) and all(isinstance(o, str) and "=" in o for o in v),
          "grids": lambda v: isinstance(v, list) and v and all(isinstance(g, dict) and g for g in v),
          "wsd_branches": lambda v: isinstance(v, bool), "pack": lambda v: isinstance(v, bool),
          "loss": lambda v: v in ("loss", "bpb"), "count": lambda v: v in ("6ND", "6N_total_D", "hardware")}
    for key, value in spec.items():
        if not ok[key](value):
            raise ConfigError(f"{p}: {key} must be {SCHEMA[key]}, got {value!r}")


LENGTH_KEYS = ("train.flops", "train.tokens")  # the run lengths `--scale` multiplies


def scaled(spec: dict, factor: float) -> dict:
    """The sweep with every train.flops and train.tokens value of its grids (and of its overrides) times factor,
    written to results/<name>-x<factor>/ so that it never mixes with the sweep as written (`--scale`)."""
    if factor == 1:
        return spec

    def times(key: str, v):
        if key not in LENGTH_KEYS or v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"--scale multiplies {key}, which is {v!r} here; it needs a number")
        return float(v) * factor

    overrides = []
    for o in spec["overrides"]:
        key, _, value = o.partition("=")
        if key in LENGTH_KEYS and value not in ("null", ""):
            try:
                o = f"{key}={float(value) * factor:g}"
            except ValueError:
                raise ConfigError(f"--scale multiplies {key}, which is {value!r} here; it needs a number") from None
        overrides.append(o)
    grids = [{k: [times(k, v) for v in values] for k, values in g.items()} for g in spec["grids"]]
    return {**spec, "name": f"{spec['name']}-x{factor:g}", "overrides": overrides, "grids": grids}


def hydra_value(v) -> str:
    """A value as a Hydra override writes it; a string with characters that Hydra's grammar reads as syntax (a
    comma, a space, brackets, quotes: `data.corpus=my data,v2`) is quoted."""
    if isinstance(v, list):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, str) and not PLAIN.fullmatch(v):
        # Inside quotes Hydra reads a backslash literally except before a quote (its own, or the closing one).
        escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", v)
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"
    return str(v).lower() if isinstance(v, bool) else ("null" if v is None else str(v))


PLAIN = re.compile(r"[\w./*+@%:?|-]+")  # what Hydra takes unquoted


def as_launched(spec: dict, g: dict) -> tuple[dict, list[str]]:
    """A grid as launched, and the overrides it adds. With wsd_branches, its train.tokens values become one
    train.branch_tokens list (one trunk with a cooldown per budget) under optim=wsd; with pack, its train.seed
    and optim.lr values become train.seeds and optim.lrs lists (one vmapped program)."""
    g, added = dict(g), []
    if spec.get("wsd_branches") and "train.tokens" in g:
        g["train.branch_tokens"] = [g.pop("train.tokens")]
        added.append("optim=wsd")
    if spec.get("pack"):
        for key, packed in PACKED_KEYS.items():
            if len(g.get(key, [])) > 1:
                g[packed] = [g.pop(key)]
    return g, added


def cells(spec: dict, extra: list[str]) -> list[list[str]]:
    """Every cell of the sweep as a list of Hydra overrides."""
    out = []
    for g in spec["grids"]:
        g, added = as_launched(spec, g)
        keys = list(g)
        for combo in itertools.product(*(g[k] for k in keys)):
            out.append([*spec["overrides"], *added, *(f"{k}={hydra_value(v)}" for k, v in zip(keys, combo)),
                        f"sweep={spec['name']}", *extra])
    return out
