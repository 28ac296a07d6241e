"""Run folders -> one tidy table.

`scaling collect RESULTS` reads RESULTS/*/summary.json and metrics.jsonl and writes

runs.csv / runs.parquet, one row per run (every status kept, never dropped silently):
    run_id, sweep, status     identity and outcome (completed | diverged | interrupted | running | failed)
    model, n_layers, d_model, n_heads, d_ff, seq_len, vocab     shape ("model" is the ladder name; vocab is the
                              model's, the tokenizer's padded to a multiple of 64)
    N                         non-embedding parameters (Kaplan et al.)
    N_embedding, N_total      token + position embedding parameters; all parameters
    D                         unique training tokens available to the run (data.unique_tokens)
    tokens                    tokens seen = steps_done x batch_size x seq_len
    unique_tokens_seen        min(D, tokens)
    epochs                    tokens / D
    steps, steps_done         planned and completed optimizer steps
    target_flops              train.flops when the run length was set by a compute budget (IsoFLOP), else empty
    C                         6 N tokens, FLOPs (Kaplan et al.; the compute used by the fits)
    flops_with_attention      (6 N + 12 n_layers seq_len d_model) tokens, FLOPs
    flops_total_params        6 N_total tokens, FLOPs
    loss                      final evaluation loss, nats per token (per byte under the byte tokenizer), on the
                              fixed validation set
    bpb                       the same loss in bits per byte of text: the validation targets' total loss in bits
                              over the bytes of text they stand for (eval_bytes; a separator counts one byte), so
                              losses compare across tokenizers; nats per byte / ln 2 under the byte tokenizer
    tokenizer, tokenizer_vocab   bytes, bpe or the tokenizer.json's path; its vocabulary before padding
    eval_tokens, eval_bytes   target tokens of the validation set and the bytes of text they stand for
    final_eval_step           the step that loss was measured at (below steps_done for a run interrupted between
                              evaluation points)
    metrics_damaged_lines     metrics.jsonl lines found damaged on a resume and dropped, if any
    train_loss                mean training loss over the last log interval, nats per token
    lr, schedule, batch_size, seed
    b1, b2, weight_decay, warmup_frac, min_lr_frac   the run's AdamW and schedule settings (its config.yaml)
    wall_s, tokens_per_s, hardware_flops_per_s, time_to_first_step_s   seconds; tokens/s; FLOP/s; seconds
    device, platform, jax, corpus_sha256, diverged_at_step, error
    devices                   local devices each batch was split over (data parallelism, scaling.devices)
    probe/<task>/<metric>     final probe metrics (scaling.probes), when probes.tasks is set; beside each,
                              probe/<task>/<metric>@chance (chance level) and @items (evaluation items)
    probe_train_fraction      share of training rows that were probe text (0: probes evaluated only)
    resumed_from_step         the checkpoint step a relaunch resumed from, else empty
    results_version           the code's results version (scaling.config.RESULTS_VERSION; empty means 1)
    branch_of, fork_step      warmup-stable-decay branches (scaling.branching): the trunk (<sweep>/trunks/<id>) and
                              the step the cooldown branched off it; wall_s includes the trunk's time to the fork
    pack_id, pack_size        runs trained as one vmapped pack (scaling.packing): the pack (<sweep>/packs/<id>) and
                              its number of runs; tokens_per_s is the pack's rate divided by pack_size

curves.parquet, one row per log point per run:
    run_id, model, N, D, step, tokens_seen, C (6 N tokens_seen), train_loss, eval_loss, eval_bpb, lr, tokens_per_s,
    elapsed_s,
    probe/<task>/<metric> at every evaluation point
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from scaling import runs

RENAME = {"tokens_seen": "tokens", "flops": "C", "final_eval_loss": "loss", "final_eval_bpb": "bpb",
          "final_train_loss": "train_loss"}


def collect(results: str | Path, write: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Return (runs, curves, problems); write the tables into `results` unless write=False."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"{results} is not a folder of runs")
    rows, curves, problems = [], [], []
    for folder in runs.run_folders(results):
        s = runs.read_summary(folder)
        if s is None or "status" not in s:
            problems.append(f"{folder.name}: no readable summary.json (partial or corrupt run folder); skipped")
            continue
        rows.append(_row(folder, s))
        curves.extend(_curve(folder, s, problems))
    table = pd.DataFrame(rows)
    curve_df = pd.DataFrame(curves)
    if len(table):
        versions = sorted(set(table.get("results_version", pd.Series(dtype=float)).fillna(1).astype(int)) or {1})
        if len(versions) > 1:
            problems.append(f"the table mixes runs of results versions {versions} (code changes that alter "
                            f"results; scaling.config.RESULTS_VERSION): compare runs of one version only")
    if write and len(table):
        table.to_csv(results / "runs.csv", index=False)
        table.to_parquet(results / "runs.parquet", index=False)
        curve_df.to_parquet(results / "curves.parquet", index=False)
    return table, curve_df, problems


def _row(folder: Path, s: dict) -> dict:
    row = {RENAME.get(k, k): v for k, v in s.items() if not isinstance(v, dict)}
    row["run_id"] = folder.name
    row["corpus_sha256"] = (s.get("corpus") or {}).get("content_sha256")
    row["jax"] = (s.get("versions") or {}).get("jax")
    row.update(_from_config(folder, s))
    for drop in ("length_source", "flops_per_token", "corpus", "versions"):
        row.pop(drop, None)
    return row


OPTIM_COLUMNS = ("b1", "b2", "weight_decay", "warmup_frac", "min_lr_frac")


def _from_config(folder: Path, s: dict) -> dict:
    """The compute budget (train.flops, when it set the run's length) and the optimizer settings, from the run's
    resolved config: a sweep that varies them must be told apart in the table."""
    try:
        cfg = OmegaConf.load(folder / runs.CONFIG)
        flops = float(cfg.train.flops) if s.get("length_source") == "train.flops" else None
        return {"target_flops": flops, **{k: cfg.optim.get(k) for k in OPTIM_COLUMNS}}
    except Exception:  # noqa: BLE001 -- a missing or damaged config only loses these labels
        return {"target_flops": None}


def _curve(folder: Path, s: dict, problems: list[str]) -> list[dict]:
    rows, damaged = runs.read_metrics(folder)
    if damaged:
        problems.append(f"{folder.name}: {runs.METRICS} line(s) {damaged} are damaged and skipped; the "
                        f"{len(rows)} valid rows are kept")
    by_step = {r["step"]: r for r in rows}  # one row per step: the last one written
    if len(by_step) < len(rows):
        problems.append(f"{folder.name}: {runs.METRICS} has {len(rows) - len(by_step)} repeated step(s) (written "
                        f"twice); the last row of each step is kept")
        rows = sorted(by_step.values(), key=lambda r: r["step"])
    return [{"run_id": folder.name, "model": s.get("model"), "N": s.get("N"), "D": s.get("D"), **r,
             "C": 6 * s.get("N", 0) * r["tokens_seen"]} for r in rows]


def summarize(table: pd.DataFrame) -> str:
    if not len(table):
        return "no runs"
    counts = table["status"].value_counts().to_dict()
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def cli(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: scaling collect RESULTS_FOLDER", file=sys.stderr)
        return 2
    try:
        table, curves, problems = collect(argv[0])
    except FileNotFoundError as e:
        print(f"scaling collect: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the tables cannot be written there
        print(f"scaling collect: cannot write the tables: {e.strerror or e}: {e.filename or argv[0]}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"{argv[0]}: {len(table)} runs ({summarize(table)}), {len(curves)} curve points -> runs.csv, "
          f"runs.parquet, curves.parquet")
    failed = table[table["status"] == "failed"] if len(table) else table
    for _, r in failed.iterrows():
        print(f"  failed: {r['run_id']}: {r.get('error')}", file=sys.stderr)
    return 0
