"""Load a runs table -- ours or any published CSV / Parquet -- into the standard columns the fits use.

Standard columns (the names `scaling collect` writes, so our own tables need no flags):

    N       model size: non-embedding parameters (ours); whatever convention the source used otherwise
    U       unique tokens (--unique-tokens COLUMN), for the data-constrained law; ours: the column D
    D       training tokens used in the fit. For our tables this is `tokens` (tokens seen = steps x batch x
            seq_len), as in Hoffmann et al.; the unique-token budget stays in `U` (our column `D`).
    C       training compute in FLOPs, counted by --count (COUNTS): 6ND (default: the table's C column, or 6 N D
            where it has none), 6N_total_D (6 x all parameters x D, from a column N_total) or hardware (the
            matrix work of a training step, attention and output layer included: a column flops_hardware, or
            ours computed from flops_with_attention, vocab and d_model). Beside it, C_6ND, C_6N_total_D and
            C_hardware where the table allows them: the joint law's compute-optimal allocation is solved in 6ND,
            and the frontier law counts in 6 N_total D unless --count says otherwise (docs/protocol.md).
    loss    final loss (ours: the column `loss`, evaluation loss in nats per token on the fixed validation set, or
            with --loss bpb the column `bpb`, bits per byte of text, which compares across tokenizers; our learning
            curves then follow, eval_bpb in place of eval_loss)
    steps, group, seed   optional
    budget      optional: a label (number or name) shared by the runs of one IsoFLOP budget; the budget's compute is
                the geometric mean of its runs' C, never the label
    schedule    optional: the learning-rate schedule; a table that mixes schedules gets a warning in the report

When only N and C are given, D = C / (6 N); when only D and C are given, N = C / (6 D). Rows with non-finite or non-positive N, D, C or loss, and rows
whose status is not "completed", are excluded and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED = ("N", "D", "C", "loss")
BPB = "bpb"  # our bits-per-byte column (scaling.collect)
# How compute is counted (scaling.sizes names the conventions): what the report says for each
COUNTS = {"6ND": "C = 6ND", "6N_total_D": "C = 6 N_total D", "hardware": "C = hardware FLOPs (6 N_total D plus "
          "attention, without the embedding lookup)"}


class TableError(ValueError):
    """A table that cannot be fitted, with what was wrong and what is allowed."""


class TooFewToFit(TableError):
    """A sound table with too few runs for any law: an error for `scaling fit`, not for a sweep that trained them."""


@dataclass
class Table:
    df: pd.DataFrame  # standard columns, valid rows only
    source: str
    excluded: list[str] = field(default_factory=list)  # human-readable reasons, one per excluded group
    curves: pd.DataFrame | None = None  # our curves.parquet, if present (eval_loss in the table's loss unit)
    loss_unit: str = "nats / token"  # "bits / byte" when the loss is our bpb column
    count: str = "6ND"  # how C is counted (COUNTS)
    frontier_count: str = "6ND"  # how the frontier law counts it: the column C_<count>

    def rows(self, df: pd.DataFrame) -> Table:
        """The same table (source, units, counts) with other rows."""
        return replace(self, df=df.reset_index(drop=True))


def read_any(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        for name in ("runs.parquet", "runs.csv"):
            if (p / name).exists():
                return read_any(p / name)
        raise TableError(f"{p} holds no runs.parquet or runs.csv; run `scaling collect {p}` first")
    if not p.exists():
        raise TableError(f"no such file: {p}")
    if p.suffix not in (".parquet", ".csv", ".tsv", ".txt"):
        raise TableError(f"{p}: unsupported table format {p.suffix!r}; allowed: .csv, .tsv, .parquet")
    try:
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        return pd.read_csv(p, sep="\t" if p.suffix == ".tsv" else ",")
    except (ValueError, OSError, UnicodeDecodeError) as e:  # pandas' and pyarrow's parse errors are ValueErrors
        if p.suffix == ".parquet":
            raise TableError(f"{p}: not a readable table (a damaged Parquet file: {_problem(e)}); rebuild it "
                             f"(`scaling collect {p.parent}` writes runs.parquet from the run folders) or give a .csv "
                             "or .tsv table") from None
        raise TableError(f"{p}: not a readable table ({_problem(e)}); allowed: a .csv or .tsv file with a header row "
                         "and one row per run, or a .parquet file") from None


def _problem(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load(path: str | Path, n: str | None = None, d: str | None = None, c: str | None = None,
         loss: str | None = None, steps: str | None = None, group: str | None = None, seed: str | None = None,
         budget: str | None = None, best_per: tuple[str, ...] | None = None,
         where: str | None = None, unique_tokens: str | None = None, count: str | None = None,
         duplicates: str = "once") -> Table:
    """Read a table and map its columns. best_per=("N", "D") keeps the lowest-loss row per (N, D), e.g. the
    best learning rate; `where` is a pandas query applied to the raw table first; rows that repeat another exactly
    are counted "once" (default), refused ("refuse") or all kept ("keep", as a published fit that used them did)."""
    raw = read_any(path)
    if where:
        try:
            raw = raw.query(where)
        except Exception as e:  # noqa: BLE001 -- pandas raises many kinds here
            raise TableError(f"--where {where!r} failed on {path}: {e}") from None
    curves = _read_curves(path)
    if loss == BPB and curves is not None:  # the learning curves in the same unit as the table's loss
        if "eval_bpb" not in curves:
            raise TableError(f"{path}: --loss bpb, but curves.parquet has no eval_bpb column (runs of a version "
                             f"that did not record bits per byte); use the default loss")
        curves = curves.assign(eval_loss=curves["eval_bpb"])
    t = from_frame(raw, str(path), n=n, d=d, c=c, loss=loss, steps=steps, group=group, seed=seed,
                   budget=budget, best_per=best_per, curves=curves, unique_tokens=unique_tokens, count=count,
                   duplicates=duplicates)
    if loss == BPB:
        t.loss_unit = "bits / byte"
    return t


def results_folder(path: str | Path) -> Path:
    """Where a table's companions live and outputs go: the folder itself, or the folder holding the file."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def _read_curves(path) -> pd.DataFrame | None:
    return read_curves(results_folder(path))


def read_curves(folder: Path) -> pd.DataFrame | None:
    """A results folder's learning curves (curves.parquet), None if it has none; TableError if it cannot be read."""
    f = Path(folder) / "curves.parquet"
    if not f.exists():
        return None
    try:
        return pd.read_parquet(f)
    except (ValueError, OSError) as e:  # truncated or empty: pyarrow's ArrowInvalid is a ValueError
        raise TableError(f"{f}: not a readable Parquet file ({_problem(e)}); `scaling collect {folder}` rebuilds it "
                         "from the run folders (or remove it to fit without learning curves)") from None


def _pick(raw: pd.DataFrame, given: str | None, defaults: tuple[str, ...], what: str, required: bool):
    if given is not None:
        if given not in raw.columns:
            raise TableError(f"column {given!r} (for {what}) is not in the table; columns: {', '.join(raw.columns)}")
        return given
    for name in defaults:
        if name in raw.columns:
            return name
    if required:
        raise TableError(f"no column for {what}: tried {', '.join(defaults)}; name it with --{what.lower()} "
                         f"COLUMN (columns: {', '.join(map(str, raw.columns))})")
    return None


def from_frame(raw: pd.DataFrame, source: str = "<frame>", n=None, d=None, c=None, loss=None, steps=None,
               group=None, seed=None, budget=None, best_per=None, curves=None, unique_tokens=None,
               count: str | None = None, duplicates: str = "once") -> Table:
    if count is not None and count not in COUNTS:
        raise TableError(f"--count {count!r} is not a counting convention; allowed: {', '.join(COUNTS)}")
    excluded = []
    repeated = raw.duplicated()
    if repeated.any() and duplicates != "keep":  # a copied row is not a seed replicate: it fakes zero noise
        where = ", ".join(str(i + 2) for i in np.flatnonzero(repeated)[:5]) + (", ..." if repeated.sum() > 5 else "")
        if duplicates == "refuse":
            raise TableError(f"{source}: {int(repeated.sum())} row(s) repeat an earlier row exactly (lines {where} of "
                             "a CSV); a repeated row is not a replicate run: remove them, or leave out --strict to "
                             "count each once")
        excluded.append(f"{int(repeated.sum())} row(s) repeating an earlier row exactly (lines {where} of a CSV), "
                        "counted once (--keep-duplicates keeps them)")
        raw = raw[~repeated].reset_index(drop=True)
    cols = {
        "N": _pick(raw, n, ("N", "params", "n_params"), "N", False),
        "D": _pick(raw, d, ("tokens", "D", "train_tokens", "training_tokens"), "D", False),
        "C": _pick(raw, c, ("C", "flops", "compute", "compute_budget"), "C", False),
        "loss": _pick(raw, loss, ("loss", "final_eval_loss", "validation_loss", "eval_loss"), "loss", True),
        "steps": _pick(raw, steps, ("steps",), "steps", False),
        "group": _pick(raw, group, ("group",), "group", False),
        "seed": _pick(raw, seed, ("seed",), "seed", False),
        "budget": _pick(raw, budget, ("budget", "compute_budget", "target_flops"), "budget", False),
    }
    if cols["N"] is None and (cols["D"] is None or cols["C"] is None):
        raise TableError("no column for N: tried N, params, n_params; name it with --n COLUMN, or give both D and C "
                         f"(N = C / 6D) (columns: {', '.join(map(str, raw.columns))})")
    if cols["D"] is None and cols["C"] is None:
        raise TableError("the table needs D (training tokens) or C (FLOPs) besides N; name them with --d or --c")
    df = pd.DataFrame({k: raw[v].to_numpy() for k, v in cols.items() if v is not None})
    u = _pick(raw, unique_tokens, ("U",), "unique tokens", False)
    if u is not None:
        df["U"] = pd.to_numeric(raw[u], errors="coerce").to_numpy(float)
    elif cols["D"] != "D" and "D" in raw.columns:
        df["U"] = raw["D"].to_numpy()  # our unique-token budget, when D is tokens seen
    for extra in ("epochs", "status", "run_id", "sweep", "lr", "model", "schedule", "dataset"):
        if extra in raw.columns and extra not in df:
            df[extra] = raw[extra].to_numpy()
    if "status" in df:
        bad = df["status"].astype(str) != "completed"
        for status, rows in df.loc[bad, "status"].astype(str).value_counts().items():
            excluded.append(f"{rows} row(s) with status {status!r}")
        df = df[~bad]
    for k in ("N", "D", "C", "loss"):
        if k in df:
            number = pd.to_numeric(df[k], errors="coerce")
            text = number.isna() & df[k].notna() & (df[k].astype(str).str.strip().str.lower() != "nan")
            if text.any():  # say what was wrong: not a bad number but no number at all
                examples = ", ".join(repr(v) for v in df.loc[text, k].astype(str).unique()[:3])
                excluded.append(f"{int(text.sum())} row(s) whose {k} ({cols[k]!r}) is text, not a number: {examples}")
                df, number = df[~text], number[~text]
            df[k] = number.astype(float)
    if "budget" in df and (as_number := pd.to_numeric(df["budget"], errors="coerce")).notna().all():
        df["budget"] = as_number.astype(float)  # else names, which group runs all the same
    if "N" not in df:
        df["N"] = df["C"] / (6 * df["D"])  # IsoFLOP tables that give budget and tokens only (e.g. Llama 3)
    if "D" not in df:
        df["D"] = df["C"] / (6 * df["N"])
    if "C" not in df:
        df["C"] = 6 * df["N"] * df["D"]
    df["C_6ND"] = 6 * df["N"].astype(float) * df["D"].astype(float)
    for other in ("6N_total_D", "hardware"):
        try:
            df[f"C_{other}"] = _counted(raw, df, other)
        except TableError:
            if count == other:
                raise
    if count not in (None, "6ND"):
        df["C"] = df[f"C_{count}"]
    values = df[list(REQUIRED)].to_numpy(float)
    ok = np.isfinite(values).all(1) & (values > 0).all(1)
    if (~ok).any():
        excluded.append(f"{int((~ok).sum())} row(s) with non-finite or non-positive N, D, C or loss")
    df = df[ok].reset_index(drop=True)
    if best_per:
        missing = [k for k in best_per if k not in df]
        if missing:
            raise TableError(f"--best-per names {missing}; allowed: standard columns {', '.join(df.columns)}")
        before = len(df)
        df = df.loc[df.groupby(list(best_per))["loss"].idxmin()].reset_index(drop=True)
        if before > len(df):
            excluded.append(f"{before - len(df)} row(s) not the lowest loss for their {'/'.join(best_per)}")
    if len(df) == 0:
        raise TableError(f"{source}: no usable rows ({'; '.join(excluded) or 'empty table'})")
    # the same numbers whatever the order of the rows: fits and their bootstraps see the runs sorted
    df = df.sort_values(["C", "N", "D", "loss"], kind="mergesort").reset_index(drop=True)
    # the frontier law's own count where none is asked for: 6 N_total D where the table allows it (docs/protocol.md)
    frontier = count or ("6N_total_D" if "C_6N_total_D" in df else "6ND")
    return Table(df, source, excluded, curves, count=count or "6ND", frontier_count=frontier)


def _counted(raw: pd.DataFrame, df: pd.DataFrame, count: str) -> np.ndarray:
    """Compute under another counting convention than 6ND, from the raw table's columns (df's index: the raw
    row each of its rows came from)."""
    def column(name):
        return pd.to_numeric(raw[name], errors="coerce").to_numpy(float)[df.index]

    tokens = df["D"].to_numpy(float)
    if count == "6N_total_D":
        if "N_total" not in raw:
            raise TableError("--count 6N_total_D needs a column N_total (all parameters, embeddings included); "
                             f"columns: {', '.join(map(str, raw.columns))}")
        return 6 * column("N_total") * tokens
    if "flops_hardware" in raw:
        return column("flops_hardware")
    ours = ("flops_with_attention", "vocab", "d_model")
    if not all(k in raw for k in ours):
        raise TableError("--count hardware needs a column flops_hardware (training FLOPs of each run, attention "
                         f"included), or ours: {', '.join(ours)}; columns: {', '.join(map(str, raw.columns))}")
    # the tied output layer is real matrix work that the attention convention leaves out (scaling.sizes)
    return column("flops_with_attention") + 6 * column("vocab") * column("d_model") * tokens
