"""Corpora, the on-disk token cache, and batches as a pure function of (seed, step).

A corpus (scaling.sources: text files, JSONL or Parquet documents, token shards) is tokenized once
(scaling.tokenizer) into the cache and read back as memory maps. Documents come in a deterministic order (files
sorted, records in order) and each goes to validation or training by a stable hash: of its relative path for a
text file, of its text for a JSONL or Parquet record. The split therefore never depends on the order files were
found in or on which other documents exist. A single text file is split by byte ranges instead: its last
val_fraction, from the line boundary nearest the cut, is validation. The training documents are then shuffled once
with a fixed seed (the same for every run), each followed by the tokenizer's separator: that is "the shuffled
training stream", and a run with D unique tokens trains on its first D tokens. Small-D runs therefore see a subset
of what large-D runs see. Token shards are already tokenized: files named as validation (val.bin,
fineweb_val_000000.bin) are the validation split, else files go by the hash of their name (one file: its last
val_fraction), and the training shards are concatenated in order.

Preparing a corpus streams it: a record batch is read, tokenized (on every core, by `tokenizers`) and appended to
the token files, so memory holds one batch, whatever the corpus's size; the training documents are then copied
into their shuffled order with positioned reads, never a whole file in memory.

The cache, under $SCALING_CACHE (default ~/.cache/scaling):
    <key>/train.bin, val.bin      the token streams (uint8, uint16 or uint32: scaling.tokenizer.token_dtype)
    <key>/meta.json               the fingerprint: counts, the content's sha256, the tokenizer, bytes of text
    <key>/tokenizer.json          the tokenizer, when it is not bytes
    tokenizers/bpe-<V>-<key>.json BPE tokenizers, keyed by the training split's content and the settings
The key hashes the corpus's file list with sizes and modification times and the tokenizer's settings; a corpus is
built in a folder beside it and renamed into place whole, so a failure leaves nothing half-written, and one
process builds it while the others wait (a file lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling import sources, tokenizer
from scaling.config import ConfigError

SHUFFLE_SEED = 0x5CA1E  # fixed: the training stream is the same for every run and every D
TOKEN_FILE_SUFFIXES = {".u8": np.uint8, ".u16": np.uint16}
MAX_NON_TEXT = 0.10  # share of a corpus's bytes that may be non-text before it is refused (data.binary)
CACHE_VERSION = 3
BATCH_BYTES = 8 << 20  # text per tokenizer call while preparing a corpus
COPY_TOKENS = 1 << 22  # tokens per read while copying shards or counting bytes


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling")


def _stable_unit(data: bytes) -> float:
    """A number in [0, 1) from bytes, identical across runs, machines and Python versions."""
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big") / 2.0**64


@dataclass
class Corpus:
    train: np.ndarray  # memory-mapped tokens of the shuffled training stream
    val: np.ndarray
    fingerprint: dict
    vocab: int  # token ids are below this
    tokenizer: tokenizer.Tokenizer | None  # None: a bare token file, whose bytes per token are unknown
    folder: Path | None = None  # its cache folder

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])


def load_corpus(spec: str = "stdlib", val_fraction: float = 0.05, cache_dir: str | None = None,
                binary: bool = False, tokenizer_spec: str = tokenizer.BYTES, vocab_size: int = 1024,
                text_field: str = "text") -> Corpus:
    """Tokenize (once) and memory-map a corpus. A corpus of text files whose bytes are mostly not text is refused
    unless `binary` (data.binary): a folder of images or archives is usually a wrong path, not a training set."""
    if Path(spec).suffix in TOKEN_FILE_SUFFIXES and Path(spec).is_file():
        return _load_token_file(Path(spec), val_fraction)
    source = sources.find(spec)
    root = cache_root(cache_dir)
    key = _cache_key(source, val_fraction, tokenizer_spec, vocab_size, text_field)
    folder = root / key
    if not (folder / "meta.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{key}.lock", "w") as lock:  # one process builds; the others wait, then read it
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "meta.json").exists():
                _build_cache(folder, source, val_fraction, tokenizer_spec, vocab_size, text_field, root)
    meta = json.loads((folder / "meta.json").read_text())
    fp = meta["fingerprint"]
    if fp.get("non_text_fraction", 0.0) > MAX_NON_TEXT and not binary:
        raise ConfigError(f"data.corpus={spec!r}: {fp['non_text_fraction']:.0%} of its bytes are not text (control "
                          f"bytes or invalid UTF-8; allowed: at most {MAX_NON_TEXT:.0%}); check the path, or set "
                          f"data.binary=true to train on the raw bytes")
    tok = tokenizer.BYTE_TOKENIZER if fp["tokenizer"] == tokenizer.BYTES else \
        tokenizer.from_hf(_hf_from_file(folder / "tokenizer.json"), fp["tokenizer"])
    dtype = np.dtype(meta["dtype"])
    return Corpus(np.memmap(folder / "train.bin", dtype=dtype, mode="r"),
                  np.memmap(folder / "val.bin", dtype=dtype, mode="r"), fp, tok.vocab, tok, folder)


def _hf_from_file(path: Path):
    from tokenizers import Tokenizer as HF

    return HF.from_file(str(path))


def _cache_key(source: sources.Source, val_fraction: float, tokenizer_spec: str, vocab_size: int,
               text_field: str) -> str:
    listing = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in source.files]
    tok: list = [tokenizer_spec]
    if tokenizer_spec == tokenizer.BPE:
        tok.append(vocab_size)
    elif tokenizer_spec != tokenizer.BYTES or source.kind == "shards":
        path = Path(tokenizer_spec if tokenizer_spec != tokenizer.BYTES else source.tokenizer_beside() or "-")
        tok += [str(path), *((path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else ())]
    key_src = json.dumps({"spec": source.spec, "val_fraction": val_fraction, "files": listing, "tokenizer": tok,
                          "text_field": text_field if source.kind == "documents" else None, "v": CACHE_VERSION})
    return hashlib.sha1(key_src.encode()).hexdigest()[:16]


def _build_cache(folder: Path, source: sources.Source, val_fraction: float, tokenizer_spec: str, vocab_size: int,
                 text_field: str, root: Path) -> None:
    """Build the cache in a folder beside `folder` and rename it into place; on any failure remove it."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tok = _tokenizer_for(source, tokenizer_spec, vocab_size, val_fraction, text_field, root)
        if source.kind == "shards":
            fingerprint = _copy_shards(source, tok, val_fraction, tmp)
        else:
            fingerprint = _tokenize(source, tok, val_fraction, text_field, tmp)
        if tok.hf is not None:
            tok.hf.save(str(tmp / "tokenizer.json"))
        fingerprint |= {"corpus": source.spec, "python": sys.version.split()[0] if source.spec in ("stdlib", "python") else None,
                        **tok.describe()}
        meta = {"fingerprint": fingerprint, "dtype": np.dtype(tok.dtype).name}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        tmp.rename(folder)  # atomic: readers see a whole cache or none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tokenizer_for(source: sources.Source, spec: str, vocab_size: int, val_fraction: float, text_field: str,
                   root: Path) -> tokenizer.Tokenizer:
    if source.kind == "shards":
        named = spec if spec != tokenizer.BYTES else source.tokenizer_beside()
        if named is None or named == tokenizer.BPE:
            raise ConfigError(f"data.corpus={source.spec!r} holds token shards: name the tokenizer that made them "
                              f"with data.tokenizer=PATH/tokenizer.json, or put its tokenizer.json beside them")
        return tokenizer.load_file(named)
    if spec == tokenizer.BYTES:
        return tokenizer.BYTE_TOKENIZER
    if spec != tokenizer.BPE:
        return tokenizer.load_file(spec)
    digest = hashlib.sha256()  # the training split's content keys the trained tokenizer
    for docs, to_val in _documents(source, val_fraction, text_field):
        for doc, v in zip(docs, to_val):
            if not v:
                digest.update(_as_bytes(doc) + b"\0")
    texts = (_as_text(doc) for docs, to_val in _documents(source, val_fraction, text_field)
             for doc, v in zip(docs, to_val) if not v)
    return tokenizer.trained_bpe(texts, digest.hexdigest(), vocab_size, root)


def _as_bytes(doc: bytes | str) -> bytes:
    return doc if isinstance(doc, bytes) else doc.encode("utf-8", "replace")


def _as_text(doc: bytes | str) -> str:
    return doc if isinstance(doc, str) else doc.decode("utf-8", "replace")


class _Stats:
    """What a pass over a corpus counts: its content hash (file names and contents, in order), files, documents,
    bytes and non-text bytes."""

    def __init__(self):
        self.content, self.files, self.bytes, self.non_text = hashlib.sha256(), 0, 0, 0


def _documents(source: sources.Source, val_fraction: float, text_field: str,
               stats: _Stats | None = None) -> Iterator[tuple[list, list[bool]]]:
    """Batches of (documents, whether each goes to validation), in corpus order: a text file is one document (its
    bytes); a JSONL or Parquet record is one (its text)."""
    stats = stats or _Stats()
    if source.kind == "documents":
        for rel, path in source.files:
            stats.files += 1
            stats.content.update(rel.encode() + b"\0")
            for texts in sources.documents(path, text_field):
                raw = [t.encode("utf-8", "replace") for t in texts]
                for r in raw:
                    stats.content.update(r + b"\0")
                    stats.bytes += len(r)
                yield texts, [_stable_unit(r) < val_fraction for r in raw]
        return
    batch, to_val, size = [], [], 0
    for rel, path in source.files:
        data = path.read_bytes()
        stats.files += 1
        stats.content.update(rel.encode() + b"\0" + data)
        stats.bytes += len(data)
        stats.non_text += non_text_bytes(data)
        if len(source.files) == 1:  # one file: by byte ranges, from the line boundary nearest the cut
            cut = int(len(data) * (1 - val_fraction))
            cut = data.rfind(b"\n", 0, cut) + 1 or cut
            yield [data[:cut], data[cut:]], [False, True]
            return
        batch.append(data)
        to_val.append(_stable_unit(rel.encode()) < val_fraction)
        size += len(data)
        if size >= BATCH_BYTES:
            yield batch, to_val
            batch, to_val, size = [], [], 0
    if batch:
        yield batch, to_val


def non_text_bytes(data: bytes) -> int:
    """Bytes that no text file holds: control characters other than tab, newline, carriage return and form
    feed, and bytes that are not valid UTF-8."""
    controls = sum(data.count(bytes([c])) for c in (*range(9), 11, *range(14, 32), 127))
    return controls + data.decode("utf-8", errors="replace").count("\ufffd")


def _tokenize(source: sources.Source, tok: tokenizer.Tokenizer, val_fraction: float, text_field: str,
              tmp: Path) -> dict:
    """Tokenize every document into val.bin (in corpus order) and train.bin (shuffled); return the fingerprint."""
    stats, lengths = _Stats(), array("q")  # token count of each training document, its separator included
    sep = np.array([tok.separator], tok.dtype)
    n_val_docs = 0
    val_bytes = 0.0
    with open(tmp / "train.unshuffled", "wb") as train, open(tmp / "val.bin", "wb") as val:
        for docs, to_val in _documents(source, val_fraction, text_field, stats):
            ids = tok.encode([_as_bytes(d) if tok.hf is None else _as_text(d) for d in docs])
            for part, f in ((False, train), (True, val)):
                mine = [a for a, v in zip(ids, to_val) if v == part]
                if not mine:
                    continue
                np.concatenate([x for a in mine for x in (a, sep)]).tofile(f)
                if part:
                    n_val_docs += len(mine)
                    val_bytes += sum(len(_as_bytes(d)) for d, v in zip(docs, to_val) if v) + len(mine)
                else:
                    lengths.extend(len(a) + 1 for a in mine)
    n_train, n_val = sum(lengths), (tmp / "val.bin").stat().st_size // np.dtype(tok.dtype).itemsize
    if not n_train or not n_val:
        raise ConfigError(
            f"data.corpus={source.spec!r} has {stats.files} file(s) and {stats.bytes:,} bytes: too little for both "
            f"a training and a validation split (val_fraction={val_fraction}); allowed: one file, or several files "
            f"or documents of which at least one falls in each split")
    _shuffle_documents(tmp / "train.unshuffled", tmp / "train.bin", np.frombuffer(lengths, np.int64), tok.dtype)
    counted = _text_bytes(tmp / "val.bin", tok)
    out = {"kind": source.kind, "files": stats.files, "documents": len(lengths) + n_val_docs,
           "train_documents": len(lengths), "val_documents": n_val_docs, "bytes": stats.bytes,
           "train_tokens": int(n_train), "val_tokens": int(n_val), "content_sha256": stats.content.hexdigest(),
           "non_text_fraction": stats.non_text / max(stats.bytes, 1),
           # Bytes of the validation text (a separator counts one) and the same counted token by token
           # (scaling.tokenizer's byte_lengths, which bits per byte uses): equal for byte-level tokenizers.
           "val_bytes": int(val_bytes), "val_bytes_from_tokens": counted}
    if source.kind == "text":
        out |= {"train_files": len(lengths), "val_files": n_val_docs}
    return out


def _text_bytes(path: Path, tok: tokenizer.Tokenizer) -> float:
    """Bytes of text the tokens of a token file stand for, read a chunk at a time (memory stays bounded)."""
    total = 0.0
    with open(path, "rb") as f:
        while len(chunk := np.fromfile(f, dtype=tok.dtype, count=COPY_TOKENS)):
            total += float(np.bincount(chunk, minlength=tok.vocab) @ tok.byte_lengths)
    return total


def _shuffle_documents(src: Path, dst: Path, lengths: np.ndarray, dtype) -> None:
    """Copy the documents of src (consecutive, of the given token lengths) into dst in the fixed shuffled order,
    with positioned reads into a bounded buffer (memory stays small whatever the corpus's size)."""
    item = np.dtype(dtype).itemsize
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) * item
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(lengths))
    buffer = bytearray()
    with open(src, "rb") as f, open(dst, "wb") as out:
        fd = f.fileno()
        for i in order:
            buffer += os.pread(fd, int(lengths[i]) * item, int(starts[i]))
            if len(buffer) >= BATCH_BYTES:
                out.write(buffer)
                buffer.clear()
        out.write(buffer)
    src.unlink()


def _copy_shards(source: sources.Source, tok: tokenizer.Tokenizer, val_fraction: float, tmp: Path) -> dict:
    """Copy token shards into train.bin and val.bin, checking every id against the tokenizer's vocabulary."""
    files = list(source.files)
    named = [f for f in files if sources.is_validation_shard(f[0])]
    if named and len(named) < len(files):
        val_files = named
    elif len(files) > 1:
        val_files = [f for f in files if _stable_unit(f[0].encode()) < val_fraction]
    else:
        val_files = []
    content, counts = hashlib.sha256(), {"train": 0, "val": 0}
    byte_total = 0.0
    with open(tmp / "train.bin", "wb") as train, open(tmp / "val.bin", "wb") as val:
        for rel, path in files:
            tokens = sources.shard_tokens(path, tok.vocab)
            content.update(rel.encode() + b"\0")
            if len(files) == 1:  # one shard: its last val_fraction of tokens, from a separator near the cut
                cut = int(len(tokens) * (1 - val_fraction))
                before = np.flatnonzero(np.asarray(tokens[max(0, cut - COPY_TOKENS):cut]) == tok.separator)
                cut = max(0, cut - COPY_TOKENS) + int(before[-1]) + 1 if len(before) else cut
                parts = [(tokens[:cut], train, "train"), (tokens[cut:], val, "val")]
            else:
                parts = [(tokens, val if (rel, path) in val_files else train, "val" if (rel, path) in val_files
                          else "train")]
            for part, f, split in parts:
                for i in range(0, len(part), COPY_TOKENS):
                    chunk = np.asarray(part[i:i + COPY_TOKENS])
                    content.update(chunk.tobytes())
                    if chunk.dtype.kind == "i" and len(chunk) and chunk.min() < 0:
                        raise ConfigError(f"{path}: a negative token id ({int(chunk.min())}); allowed: ids from 0 to "
                                          f"{tok.vocab - 1}")
                    top = int(chunk.max()) if len(chunk) else 0
                    if top >= tok.vocab:
                        at = i + int(np.argmax(chunk >= tok.vocab))
                        raise ConfigError(f"{path}: token id {top} (at token {at:,}) is beyond the vocabulary of "
                                          f"{tok.vocab} of tokenizer {tok.name}; name the tokenizer that made "
                                          f"these shards")
                    chunk.astype(tok.dtype).tofile(f)
                    byte_total += float(np.bincount(chunk, minlength=tok.vocab) @ tok.byte_lengths)
                    counts[split] += len(chunk)
    if not counts["train"] or not counts["val"]:
        raise ConfigError(f"data.corpus={source.spec!r}: {len(files)} shard(s) give no {'validation' if counts['train'] else 'training'} "
                          f"tokens (val_fraction={val_fraction}); allowed: shards named as validation (val.bin, "
                          f"*_val_*.bin) beside training shards, several shards, or one to split")
    val_counted = _text_bytes(tmp / "val.bin", tok)
    return {"kind": "shards", "files": len(files), "val_files": len(val_files) or None,
            "bytes": int(byte_total), "train_tokens": counts["train"], "val_tokens": counts["val"],
            "content_sha256": content.hexdigest(), "non_text_fraction": 0.0,
            "val_bytes": int(val_counted), "val_bytes_from_tokens": val_counted}


def _load_token_file(path: Path, val_fraction: float) -> Corpus:
    """A bare pre-tokenized stream (.u8 or .u16): the last val_fraction of tokens is validation. Without a
    tokenizer the bytes per token of a .u16 file are unknown: no bits per byte."""
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
        "tokenizer": tokenizer.BYTES if dtype == np.uint8 else None,
    }
    tok = tokenizer.BYTE_TOKENIZER if dtype == np.uint8 else None
    vocab = 256 if dtype == np.uint8 else int(tokens.max()) + 1
    return Corpus(tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :], fingerprint, vocab, tok)


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
    d = cfg.data
    corpus = load_corpus(d.corpus, d.val_fraction, d.cache_dir, d.binary, d.tokenizer, d.vocab_size, d.text_field)
    if corpus.vocab > shape.vocab:
        raise ConfigError(f"model.vocab={shape.vocab} is smaller than the corpus vocabulary ({corpus.vocab}); "
                          f"leave model.vocab unset to follow the tokenizer")
    return corpus, int(cfg.data.unique_tokens) if cfg.data.unique_tokens is not None else corpus.n_train


def eval_batches(corpus: Corpus, seq_len: int, n_windows: int) -> np.ndarray:
    """The fixed validation windows in batches of up to 64, (batches, batch, seq_len + 1)."""
    val = eval_windows(corpus, seq_len, n_windows)
    eval_bs = min(64, len(val))
    return val[: len(val) // eval_bs * eval_bs].reshape(-1, eval_bs, seq_len + 1)


def eval_bytes(corpus: Corpus, batches: np.ndarray) -> float | None:
    """Bytes of text that the targets of the validation batches stand for (a separator counts one byte): the
    denominator of bits per byte. None when the corpus's tokenizer is unknown (a bare .u16 token file)."""
    if corpus.tokenizer is None:
        return None
    return float(corpus.tokenizer.byte_lengths[np.asarray(batches)[..., 1:]].sum())


def describe(corpus: Corpus, seq_len: int, n_windows: int) -> str:
    """What `scaling corpus` prints: sizes, the tokenizer and its bytes per token, and (for bytes) how much of the
    validation text copying explains (copy_rate)."""
    fp = corpus.fingerprint
    docs = f", {fp['documents']:,} documents" if "documents" in fp else ""
    per_token = (f"; {fp['val_bytes'] / fp['val_tokens']:.3f} bytes per token on the validation split"
                 if fp.get("val_bytes") else "")
    lines = [(f"corpus {fp['corpus']} ({fp.get('kind', 'token file')}, {fp['files']:,} files{docs}, "
              f"{fp['bytes']:,} bytes): {fp['train_tokens']:,} training and {fp['val_tokens']:,} validation tokens"),
             (f"tokenizer {fp.get('tokenizer')}: vocabulary {corpus.vocab:,}, the model's "
              f"{tokenizer.padded(corpus.vocab):,}{per_token}"),
             f"content sha256 {fp['content_sha256']}"]
    if fp.get("tokenizer") == tokenizer.BYTES:
        windows = eval_windows(corpus, seq_len, n_windows)
        lines.append(f"copying: {copy_rate(windows, 5, 128):.1%} of the validation windows' bytes are the byte after "
                     f"the most recent earlier 5-byte match within 128 bytes ({copy_rate(windows, 5, 64):.1%} within "
                     f"64; {len(windows)} windows of {seq_len + 1})")
    if corpus.folder is not None:
        lines.append(f"cache {corpus.folder}")
    return "\n".join(lines)


def copy_rate(windows: np.ndarray, n: int = 5, within: int = 128) -> float:
    """How much of a text copying explains: the share of the windows' predicted tokens (all but each window's first)
    that equal the token which followed the most recent earlier occurrence, in the same window and at most `within`
    tokens back, of the n tokens before them. A position without such an occurrence (or without n tokens before it)
    counts as missed. On bytes of code this is about ten times what it is on bytes of English (docs/findings.md):
    the in-context copying a model can learn is worth that much more there."""
    w = np.asarray(windows, np.uint64)
    gram = np.zeros_like(w)  # the n tokens before each position, packed (exact for tokens below 2**(64 // n))
    for i in range(1, n + 1):
        gram[:, n:] = gram[:, n:] * np.uint64(1 << (64 // n)) + w[:, n - i:w.shape[1] - i]
    predicted = np.full(w.shape, -1, np.int64)
    for k in range(min(within, w.shape[1] - n - 1), 0, -1):  # nearest last, so the most recent match wins
        match = np.zeros(w.shape, bool)
        match[:, n + k:] = gram[:, n + k:] == gram[:, n:w.shape[1] - k]
        rows, cols = np.nonzero(match)
        predicted[rows, cols] = w[rows, cols - k].astype(np.int64)
    return float((predicted[:, 1:] == w[:, 1:].astype(np.int64)).mean())


def unigram_entropy(tokens: np.ndarray, vocab: int = 256) -> float:
    """Entropy in nats per token of the empirical token distribution: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
