"""Corpora, the on-disk token cache, and batches as a pure function of (seed, step).

Byte-level tokens (vocab 256). A text corpus is a list of files in a deterministic (sorted) order; each file
goes to validation or training by a stable hash of its relative path, so the split never depends on the
order files were found in or on which other files exist. The training files are then shuffled once with a
fixed seed (the same for every run) and concatenated, each followed by a NUL byte as a document separator:
that is "the shuffled training stream", and a run with D unique tokens trains on its first D tokens. Small-D
runs therefore see a subset of what large-D runs see.

The cache holds train.bin and val.bin (raw uint8 or uint16) and meta.json with the fingerprint, under
$SCALING_CACHE (default ~/.cache/scaling)/<key>/. The key hashes the file list with sizes and
modification times; the fingerprint hashes the content.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import ConfigError

SEPARATOR = 0  # byte between documents
SHUFFLE_SEED = 0x5CA1E  # fixed: the training stream is the same for every run and every D
TOKEN_FILE_SUFFIXES = {".u8": np.uint8, ".u16": np.uint16}
MAX_NON_TEXT = 0.10  # share of a corpus's bytes that may be non-text before it is refused (data.binary)


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling")


def stdlib_files() -> list[tuple[str, Path]]:
    """The .py files of the running interpreter's standard library (site-packages excluded), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")) or not path.is_file():
            continue
        files.append((rel, path))
    return sorted(files)


def text_files(spec: str) -> list[tuple[str, Path]]:
    """A user's text: one file, a folder (every file below it), or a glob pattern."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [(p.name, p)]
    if p.is_dir():
        found = [(f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file()]
    else:
        found = [(f, Path(f)) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
    if not found:
        raise ConfigError(f"data.corpus={spec!r} matches no file; give 'stdlib', a file, a folder or a glob")
    return sorted(found)


def _stable_unit(text: str) -> float:
    """A number in [0, 1) from a string, identical across runs, machines and Python versions."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2.0**64


@dataclass
class Corpus:
    train: np.ndarray  # memory-mapped tokens of the shuffled training stream
    val: np.ndarray
    fingerprint: dict
    vocab: int

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])


def load_corpus(spec: str = "stdlib", val_fraction: float = 0.05, cache_dir: str | None = None,
                binary: bool = False) -> Corpus:
    """Tokenize (once) and memory-map a corpus. A corpus whose bytes are mostly not text is refused unless
    `binary` (data.binary): a folder of images or archives is usually a wrong path, not a training set."""
    if Path(spec).suffix in TOKEN_FILE_SUFFIXES and Path(spec).is_file():
        return _load_token_file(Path(spec), val_fraction)
    files = stdlib_files() if spec == "stdlib" else text_files(spec)
    listing = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files]
    key_src = json.dumps({"spec": spec, "val_fraction": val_fraction, "files": listing, "v": 2})
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    folder = cache_root(cache_dir) / key
    if not (folder / "meta.json").exists():
        _build_cache(folder, spec, files, val_fraction)
    meta = json.loads((folder / "meta.json").read_text())
    non_text = meta["fingerprint"].get("non_text_fraction", 0.0)
    if non_text > MAX_NON_TEXT and not binary:
        raise ConfigError(f"data.corpus={spec!r}: {non_text:.0%} of its bytes are not text (control bytes or "
                          f"invalid UTF-8; allowed: at most {MAX_NON_TEXT:.0%}); check the path, or set "
                          f"data.binary=true to train on the raw bytes")
    return Corpus(
        train=np.memmap(folder / "train.bin", dtype=np.uint8, mode="r"),
        val=np.memmap(folder / "val.bin", dtype=np.uint8, mode="r"),
        fingerprint=meta["fingerprint"],
        vocab=256,
    )


def non_text_bytes(data: bytes) -> int:
    """Bytes that no text file holds: control characters other than tab, newline, carriage return and form
    feed, and bytes that are not valid UTF-8."""
    controls = sum(data.count(bytes([c])) for c in (*range(9), 11, *range(14, 32), 127))
    return controls + data.decode("utf-8", errors="replace").count("\ufffd")


def _split(files, val_fraction: float) -> tuple[list[bytes], list[bytes], hashlib._Hash, int, int]:
    """(train documents, validation documents, content hash, bytes, non-text bytes). Files go to validation by a
    stable hash of their path; a single file is split by byte ranges instead: its last val_fraction, from the
    line boundary nearest the cut, is validation."""
    content, train_docs, val_docs, n_bytes, non_text = hashlib.sha256(), [], [], 0, 0
    for rel, path in files:
        data = path.read_bytes()
        content.update(rel.encode() + b"\0" + data)
        n_bytes += len(data)
        non_text += non_text_bytes(data)
        (val_docs if _stable_unit(rel) < val_fraction else train_docs).append(data)
    if len(files) == 1:
        data = (train_docs + val_docs)[0]
        cut = int(len(data) * (1 - val_fraction))
        cut = data.rfind(b"\n", 0, cut) + 1 or cut
        train_docs, val_docs = [data[:cut]], [data[cut:]]
    return train_docs, val_docs, content, n_bytes, non_text


def _build_cache(folder: Path, spec: str, files, val_fraction: float) -> None:
    train_docs, val_docs, content, n_bytes, non_text = _split(files, val_fraction)
    if not sum(map(len, train_docs)) or not sum(map(len, val_docs)):
        raise ConfigError(
            f"data.corpus={spec!r} has {len(files)} file(s) and {n_bytes:,} bytes: too little for both a training "
            f"and a validation split (val_fraction={val_fraction}); allowed: one file, or several files of which "
            f"at least one falls in each split"
        )
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(train_docs))
    sep = bytes([SEPARATOR])
    train = b"".join(train_docs[i] + sep for i in order)
    val = b"".join(d + sep for d in val_docs)
    fingerprint = {
        "corpus": spec,
        "python": sys.version.split()[0] if spec == "stdlib" else None,
        "files": len(files),
        "train_files": len(train_docs),
        "val_files": len(val_docs),
        "bytes": n_bytes,
        "train_tokens": len(train),
        "val_tokens": len(val),
        "content_sha256": content.hexdigest(),
        "non_text_fraction": non_text / max(n_bytes, 1),
    }
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "train.bin").write_bytes(train)
    (tmp / "val.bin").write_bytes(val)
    (tmp / "meta.json").write_text(json.dumps({"fingerprint": fingerprint}, indent=1))
    try:
        tmp.rename(folder)  # atomic: concurrent workers either see a whole cache or none
    except OSError:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()  # another process built it first


def _load_token_file(path: Path, val_fraction: float) -> Corpus:
    """A pre-tokenized stream (.u8 or .u16): the last val_fraction of tokens is validation."""
    dtype = TOKEN_FILE_SUFFIXES[path.suffix]
    tokens = np.memmap(path, dtype=dtype, mode="r")
    n_val = int(len(tokens) * val_fraction)
    if n_val < 2 or len(tokens) - n_val < 2:
        raise ConfigError(f"token file {path} holds {len(tokens)} tokens: too few to split")
    head = np.asarray(tokens[: 1 << 20])
    fingerprint = {
        "corpus": str(path),
        "python": None,
        "files": 1,
        "bytes": int(path.stat().st_size),
        "train_tokens": len(tokens) - n_val,
        "val_tokens": n_val,
        "content_sha256": hashlib.sha256(head.tobytes()).hexdigest() + f"+size{len(tokens)}",
    }
    vocab = 256 if dtype == np.uint8 else int(tokens.max()) + 1
    return Corpus(tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :], fingerprint, vocab)


class Batches:
    """Training batches over the first D tokens of the training stream, a pure function of (seed, step).

    The D-token prefix is cut into non-overlapping windows of seq_len + 1 tokens (inputs and next-token
    targets share seq_len tokens). Example i of the run (i = step * batch + b) is window perm_e[i mod n]
    with e = i // n the epoch and perm_e a permutation seeded by (seed, e): every epoch sees every window
    exactly once, and a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, corpus: Corpus, unique_tokens: int, seq_len: int, batch_size: int, seed: int):
        if unique_tokens > corpus.n_train:
            raise ConfigError(
                f"data.unique_tokens={unique_tokens:.4g} exceeds the corpus training split "
                f"({corpus.n_train:,} tokens of {corpus.fingerprint['corpus']!r}); allowed: at most that"
            )
        self.n_windows = (unique_tokens - 1) // seq_len
        if self.n_windows < 1:
            raise ConfigError(
                f"data.unique_tokens={unique_tokens} is shorter than one window of seq_len + 1 = {seq_len + 1}"
            )
        self.tokens = corpus.train
        self.unique_tokens = unique_tokens
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}
        self._offsets = np.arange(seq_len + 1)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch, SHUFFLE_SEED])
            self._perms[epoch] = rng.permutation(self.n_windows)
        return self._perms[epoch]

    def windows(self, step: int, n_steps: int = 1) -> np.ndarray:
        """Window indices for steps [step, step + n_steps), shape (n_steps, batch)."""
        i = np.arange(step * self.batch_size, (step + n_steps) * self.batch_size, dtype=np.int64)
        epoch, pos = np.divmod(i, self.n_windows)
        out = np.empty_like(i)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._perm(int(e))[pos[sel]]
        return out.reshape(n_steps, self.batch_size)

    def get(self, step: int, n_steps: int = 1) -> np.ndarray:
        """Token windows for steps [step, step + n_steps): int32 array (n_steps, batch, seq_len + 1)."""
        starts = self.windows(step, n_steps) * self.seq_len
        return np.asarray(self.tokens[starts[..., None] + self._offsets], dtype=np.int32)


def eval_windows(corpus: Corpus, seq_len: int, n_windows: int) -> np.ndarray:
    """The fixed validation set: n_windows evenly spaced windows of the validation stream.

    It depends only on the corpus, seq_len and n_windows -- never on D, the seed or the model -- so every run
    of a sweep is scored on the same tokens.
    """
    last_start = len(corpus.val) - seq_len - 1
    if last_start < 0:
        raise ConfigError(f"the validation split ({len(corpus.val)} tokens) is shorter than one window")
    n = min(n_windows, last_start // seq_len + 1)
    starts = np.linspace(0, last_start, n).astype(np.int64)
    return np.asarray(corpus.val[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)


def training_corpus(cfg, shape) -> tuple[Corpus, int]:
    """A run's corpus and its unique tokens (data.unique_tokens, else the whole training split); the model's
    vocabulary must cover the corpus."""
    corpus = load_corpus(cfg.data.corpus, cfg.data.val_fraction, cfg.data.cache_dir, cfg.data.binary)
    if corpus.vocab > shape.vocab:
        raise ConfigError(f"model.vocab={shape.vocab} is smaller than the corpus vocabulary ({corpus.vocab})")
    return corpus, int(cfg.data.unique_tokens) if cfg.data.unique_tokens is not None else corpus.n_train


def eval_batches(corpus: Corpus, seq_len: int, n_windows: int) -> np.ndarray:
    """The fixed validation windows in batches of up to 64, (batches, batch, seq_len + 1)."""
    val = eval_windows(corpus, seq_len, n_windows)
    eval_bs = min(64, len(val))
    return val[: len(val) // eval_bs * eval_bs].reshape(-1, eval_bs, seq_len + 1)


def unigram_entropy(tokens: np.ndarray, vocab: int = 256) -> float:
    """Entropy in nats per token of the empirical token distribution: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
