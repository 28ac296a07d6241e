"""Probe tasks: small text formats that measure abilities which may emerge with scale.

Each task makes (prompt, answer) byte strings. Two uses:

* Training mix: with probes.train_fraction > 0, that share of the training rows (chosen by (seed, step), so a
  resumed run sees the same batches) is replaced by a window of concatenated probe examples.
* Evaluation: a fixed held-out set per task (its own seed; modular arithmetic also holds out a fixed set of operand
  pairs that training never shows) scored at every evaluation point with one forward pass. Greedy exact match is
  computed with teacher forcing, which is exact: greedy decoding reproduces the answer if and only if the argmax at
  every answer position is the answer's token.

Metrics (a discontinuous one and its continuous counterparts, with chance levels):
    addition   exact_match (chance 10^-(digits+1)), per_digit (teacher-forced digit accuracy, chance 0.1),
               logprob (mean log-probability of the whole answer, nats)
    copy       exact_match (the whole repeat, chance 26^-L), token_accuracy (per repeated letter, chance 1/26),
               icl_score (Olsson et al. 2022: mean loss on the repeat minus on the first copy, nats; lower is better)
    modular    exact_match ((a + b) mod p, chance 1/p), logprob
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.config import PROBE_TASKS as TASKS
from scaling.config import ConfigError

PROBE_SEED = 0x9E3779B1
EVAL_SEED = 0x5EED
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


@dataclass
class Task:
    name: str
    cfg: object

    def example(self, rng: np.random.Generator, held_out: bool = False) -> tuple[bytes, bytes]:
        c = self.cfg
        if self.name == "addition":
            hi = 10 ** c.addition_digits
            a, b = (int(v) for v in rng.integers(0, hi, 2))
            s = str(a + b)
            return f"{a}+{b}=".encode(), (s[::-1] if c.addition_reversed else s).encode() + b"\n"
        if self.name == "copy":
            s = LETTERS[rng.integers(0, 26, c.copy_length)].tobytes()
            return s + b"|", s + b"\n"
        p = c.modulus
        while True:  # a fixed fifth of the operand pairs is evaluation-only
            a, b = (int(v) for v in rng.integers(0, p, 2))
            if _held_out_pair(a, b, p) == held_out:
                return f"{a}+{b}%{p}=".encode(), f"{(a + b) % p}\n".encode()

    def chance(self) -> dict:
        c = self.cfg
        if self.name == "addition":
            return {"exact_match": 10.0 ** -(c.addition_digits + 1), "per_digit": 0.1}
        if self.name == "copy":
            return {"exact_match": 26.0 ** -c.copy_length, "token_accuracy": 1 / 26}
        return {"exact_match": 1 / c.modulus}


def _held_out_pair(a: int, b: int, p: int) -> bool:
    return ((a * 7919 + b * 104729 + p) * 2654435761) % 2**32 < 2**32 // 5


def tasks(cfg) -> list[Task]:
    """The configured tasks (probes config already checked by scaling.config.validate)."""
    return [Task(t, cfg) for t in cfg.tasks]


def mix(tokens: np.ndarray, start_step: int, task_list: list[Task], fraction: float, seed: int) -> np.ndarray:
    """Replace a `fraction` of the rows of tokens (k, batch, seq+1) with probe text, in place; a pure function of
    (seed, step) for each step."""
    if not task_list or fraction <= 0:
        return tokens
    k, batch, width = tokens.shape
    for i in range(k):
        rng = np.random.default_rng([seed, start_step + i, PROBE_SEED])
        for b in np.flatnonzero(rng.random(batch) < fraction):
            text = bytearray()
            while len(text) < width:
                prompt, answer = task_list[int(rng.integers(len(task_list)))].example(rng)
                text += prompt + answer
            tokens[i, b] = np.frombuffer(bytes(text[:width]), dtype=np.uint8)
    return tokens


@dataclass
class EvalSet:
    """One task's held-out items, right-aligned in rows of equal length so every answer ends at the last position."""
    task: Task
    rows: np.ndarray  # (items, length) int32
    answer_mask: np.ndarray  # (items, length - 1) bool over target positions
    first_mask: np.ndarray  # copy only: the first copy's letters (targets), for the ICL score
    digit_mask: np.ndarray  # answer positions excluding the final newline


def eval_set(task: Task, n_items: int, seq_len: int) -> EvalSet:
    rng = np.random.default_rng([EVAL_SEED, TASKS.index(task.name)])
    items = [task.example(rng, held_out=True) for _ in range(n_items)]
    length = max(len(p) + len(a) for p, a in items) + 1  # at least one pad byte in front
    if length > seq_len + 1:
        raise ConfigError(f"probe task {task.name}: items of {length} bytes do not fit model.seq_len={seq_len}")
    rows = np.full((n_items, length), ord("\n"), dtype=np.int32)
    answer = np.zeros((n_items, length - 1), bool)
    first = np.zeros_like(answer)
    for i, (p, a) in enumerate(items):
        text = np.frombuffer(p + a, dtype=np.uint8)
        rows[i, length - len(text):] = text
        answer[i, length - 1 - len(a):] = True  # target index t predicts rows[t + 1]
        if task.name == "copy":
            first[i, length - 1 - len(text) + 1: length - 1 - len(a) - 1] = True  # letters 2..L of the first copy
    digits = answer.copy()
    digits[:, -1] = False  # the terminating newline
    return EvalSet(task, rows, answer, first, digits)


def score(es: EvalSet, lp: np.ndarray, hit: np.ndarray) -> dict:
    """Metrics from the log-probability of each target token and whether it was the argmax, (items, length - 1)."""
    lp, hit = np.asarray(lp, np.float64), np.asarray(hit, bool)
    name = es.task.name
    exact = np.all(hit | ~es.answer_mask, axis=1)
    out = {"exact_match": float(exact.mean())}
    if name == "addition":
        out["per_digit"] = float(hit[es.digit_mask].mean())
        out["logprob"] = float((lp * es.answer_mask).sum(1).mean())
    elif name == "copy":
        out["token_accuracy"] = float(hit[es.digit_mask].mean())
        out["icl_score"] = float(-(lp[es.digit_mask]).mean() + (lp[es.first_mask]).mean())
    else:
        out["logprob"] = float((lp * es.answer_mask).sum(1).mean())
    return {f"probe/{name}/{k}": v for k, v in out.items()}


def metadata(task_list: list[Task], n_items: int, train_fraction: float) -> dict:
    """Chance levels and item counts, as columns '<metric>@chance' and '<metric>@items' of the results table, and
    the share of training rows that were probe text (0: the probes were only evaluated)."""
    out = {"probe_train_fraction": train_fraction if task_list else None}
    for t in task_list:
        for metric, c in t.chance().items():
            out[f"probe/{t.name}/{metric}@chance"] = c
        for metric in ("exact_match", "per_digit", "token_accuracy"):
            out[f"probe/{t.name}/{metric}@items"] = n_items
    return out
