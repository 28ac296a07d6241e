"""Your data, your tokenizer: corpora in the formats they ship in, BPE and tokenizer.json tokenizers, bits per byte,
and every bad file as one line that leaves nothing half-written in the cache."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from interrupt import StopAfter  # tests/interrupt.py

from scaling import data, engine, plan, runs, sizes, sources, tokenizer, train
from scaling.config import ConfigError

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "can", "has", "been", "if", "more", "when", "will", "would", "who", "so", "no"]


def make_docs(n: int = 400, seed: int = 0) -> list[str]:
    """Documents of a few sentences of common English words (deterministic)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = [WORDS[j] for j in rng.zipf(1.3, size=int(rng.integers(30, 300))) % len(WORDS)]
        docs.append(f"Document {i}. " + " ".join(words).capitalize() + ".\n")
    return docs


def write_parquet(folder: Path, docs: list[str], shards: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        part = docs[i::shards]
        pq.write_table(pa.table({"text": part, "id": list(range(len(part)))}), folder / f"part-{i}.parquet")
    (folder / "README.md").write_text("# a dataset card, not data\n")
    return folder


def write_jsonl(folder: Path, docs: list[str], shards: int = 3) -> Path:
    """The same shards as write_parquet, as .jsonl, .jsonl.gz and .jsonl.zst."""
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    for i, suffix in zip(range(shards), (".jsonl", ".jsonl.gz", ".jsonl.zst")):
        lines = "".join(json.dumps({"text": d, "meta": {"n": j}}) + "\n" for j, d in enumerate(docs[i::shards]))
        path = folder / f"part-{i}{suffix}"
        if suffix == ".jsonl.gz":
            path.write_bytes(gzip.compress(lines.encode()))
        elif suffix == ".jsonl.zst":
            path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
        else:
            path.write_text(lines)
    return folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    docs = make_docs()
    return {"docs": docs, "parquet": write_parquet(root / "parquet", docs), "jsonl": write_jsonl(root / "jsonl", docs),
            "root": root}


@pytest.fixture(scope="module")
def bpe_corpus(corpora, tmp_path_factory):
    """The Parquet corpus under a 512-token BPE, its tokenizer.json saved, and the same tokens as nanoGPT shards."""
    cache = tmp_path_factory.mktemp("bpe-cache")
    c = data.load_corpus(str(corpora["parquet"]), cache_dir=str(cache), tokenizer_spec="bpe", vocab_size=512)
    tok_json = corpora["root"] / "tokenizer.json"
    c.tokenizer.hf.save(str(tok_json))
    shards = corpora["root"] / "shards"
    shards.mkdir()
    np.asarray(c.train, np.uint16).tofile(shards / "train.bin")
    np.asarray(c.val, np.uint16).tofile(shards / "val.bin")
    shutil.copy(tok_json, shards / "tokenizer.json")
    return {"corpus": c, "cache": cache, "tokenizer": tok_json, "shards": shards}


def leftovers(cache: Path) -> list[str]:
    """What a failed build left in a cache: anything but lock files and the trained-tokenizer folder."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock") and p.name != "tokenizers") \
        if cache.exists() else []


# ---- formats -------------------------------------------------------------------------------------------------

def test_parquet_and_jsonl_shards_give_the_same_token_streams(corpora, tmp_path):
    a = data.load_corpus(str(corpora["parquet"]), cache_dir=str(tmp_path))
    b = data.load_corpus(str(corpora["jsonl"]) + "/part-*", cache_dir=str(tmp_path))
    assert a.fingerprint["kind"] == b.fingerprint["kind"] == "documents"
    assert a.fingerprint["files"] == 3  # the README beside the shards is not data
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    # Each document goes to validation by the hash of its text, followed by one separator.
    docs = corpora["docs"]
    val = [d for d in (*docs[0::3], *docs[1::3], *docs[2::3]) if data._stable_unit(d.encode()) < 0.05]
    assert 0 < len(val) < len(docs) / 5
    assert bytes(np.asarray(a.val)) == b"".join(d.encode() + b"\0" for d in val)
    assert a.fingerprint["train_tokens"] + a.fingerprint["val_tokens"] == sum(len(d.encode()) + 1 for d in docs)


def test_token_shards_as_nanogpt_llmc_and_numpy_write_them(bpe_corpus, tmp_path):
    c = bpe_corpus["corpus"]
    nano = data.load_corpus(str(bpe_corpus["shards"]), cache_dir=str(tmp_path))  # tokenizer.json beside them
    assert nano.fingerprint["tokenizer_sha256"] == c.fingerprint["tokenizer_sha256"] and nano.vocab == c.vocab
    np.testing.assert_array_equal(nano.train, c.train)
    np.testing.assert_array_equal(nano.val, c.val)
    assert nano.fingerprint["val_bytes"] == c.fingerprint["val_bytes"]
    # llm.c / modded-nanogpt: a 256-int32 header (magic, version 1 = uint16, token count); NumPy: .npy
    for name, writer in (("llmc", _write_llmc), ("npy", lambda p, t: np.save(p.with_suffix(".npy"), t))):
        folder = tmp_path / name
        folder.mkdir()
        writer(folder / "fineweb_train_000001.bin", np.asarray(c.train, np.uint16))
        writer(folder / "fineweb_val_000000.bin", np.asarray(c.val, np.uint16))
        other = data.load_corpus(str(folder), cache_dir=str(tmp_path), tokenizer_spec=str(bpe_corpus["tokenizer"]))
        np.testing.assert_array_equal(other.train, c.train)
        np.testing.assert_array_equal(other.val, c.val)


def _write_llmc(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, np.int32)
    header[:3] = sources.LLMC_MAGIC, 1, len(tokens)
    path.write_bytes(header.tobytes() + tokens.tobytes())


# ---- tokenizers ----------------------------------------------------------------------------------------------

def test_bpe_is_deterministic_cached_by_content_and_sees_only_the_training_split(corpora, tmp_path, monkeypatch):
    docs = list(corpora["docs"])
    # A word repeated in one validation document: a BPE trained on the training split cannot know it.
    i = next(i for i, d in enumerate(docs) if data._stable_unit((d + " zyxwvut" * 60).encode()) < 0.05)
    docs[i] = docs[i] + " zyxwvut" * 60
    held = write_parquet(tmp_path / "held", docs)
    a = data.load_corpus(str(held), cache_dir=str(tmp_path / "a"), tokenizer_spec="bpe", vocab_size=400)
    assert not any("zyx" in t for t in a.tokenizer.hf.get_vocab())
    # The same word in a training document is learnt (the check above can fail).
    j = next(j for j, d in enumerate(docs) if data._stable_unit((d + " zyxwvut" * 60).encode()) > 0.05)
    seen = [*docs[:j], docs[j] + " zyxwvut" * 60, *docs[j + 1:]]
    b = data.load_corpus(str(write_parquet(tmp_path / "seen", seen)), cache_dir=str(tmp_path / "a"),
                         tokenizer_spec="bpe", vocab_size=400)
    assert any("zyx" in t for t in b.tokenizer.hf.get_vocab())
    # Deterministic: trained again in another cache, the same tokenizer byte for byte.
    again = data.load_corpus(str(held), cache_dir=str(tmp_path / "b"), tokenizer_spec="bpe", vocab_size=400)
    assert again.fingerprint["tokenizer_sha256"] == a.fingerprint["tokenizer_sha256"]
    np.testing.assert_array_equal(again.train, a.train)
    # Cached by the training split's content: the corpus rebuilt (another path, same text) trains nothing.
    monkeypatch.setattr(tokenizer, "train_bpe", lambda *a, **k: pytest.fail("retrained a cached tokenizer"))
    moved = shutil.copytree(held, tmp_path / "moved")
    c = data.load_corpus(str(moved), cache_dir=str(tmp_path / "a"), tokenizer_spec="bpe", vocab_size=400)
    assert c.fingerprint["tokenizer_sha256"] == a.fingerprint["tokenizer_sha256"]


def test_model_vocabulary_follows_the_tokenizer_padded_to_64(make_cfg, bpe_corpus):
    byte_cfg, bpe_cfg = make_cfg(), make_cfg("data.tokenizer=bpe", "data.vocab_size=1000")
    assert plan.shape_of(byte_cfg).vocab == 256 and plan.shape_of(bpe_cfg).vocab == 1024
    path_cfg = make_cfg(f"data.tokenizer={bpe_corpus['tokenizer']}")
    assert plan.shape_of(path_cfg).vocab == 512  # the tokenizer.json's 512 tokens
    assert plan.shape_of(make_cfg(f"data.corpus={bpe_corpus['shards']}")).vocab == 512  # tokenizer.json beside
    assert plan.shape_of(make_cfg("data.tokenizer=bpe", "data.vocab_size=1000", "model.vocab=2048")).vocab == 2048
    # The embeddings grow; N, the non-embedding count the laws use, does not.
    small, large = (sizes.count_params(plan.shape_of(c)) for c in (byte_cfg, bpe_cfg))
    d = plan.shape_of(byte_cfg).d_model
    assert large["N"] == small["N"] and large["N_total"] - small["N_total"] == (1024 - 256) * d
    # Run ids: the byte tokenizer's are those of before (vocab 256 hashed), a BPE's differ.
    assert runs.identity(byte_cfg)["model"]["vocab"] == 256 and runs.run_id(bpe_cfg) != runs.run_id(byte_cfg)


def test_scaling_plan_shows_n_and_n_total(make_cfg, capsys):
    from scaling import sweep_plan

    rows = sweep_plan.describe([*_tiny(), "data.tokenizer=bpe", "data.vocab_size=1000", "model=s02"])
    sweep_plan.print_plan("x", rows)
    out = capsys.readouterr().out
    assert "N_total" in out.splitlines()[1]
    assert f"{sizes.count_params(rows[0].shape)['N_total']:.3g}" in out.splitlines()[2]


def _tiny() -> list[str]:
    from conftest import TINY

    return list(TINY)


def test_sentencepiece_style_byte_lengths():
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(make_docs(100), vocab_size=300, special_tokens=["</s>"])
    tok = tokenizer.from_hf(sp._tokenizer, "sp")
    text = "the of and to in a"
    ids = sp._tokenizer.encode(text, add_special_tokens=False).ids
    # The metaspace before each word counts one byte (a space); the first word's, added by the tokenizer, too.
    assert tok.byte_lengths[ids].sum() == len((" " + text).encode())
    assert tok.byte_lengths[tok.separator] == 1


# ---- bits per byte -------------------------------------------------------------------------------------------

def test_bits_per_byte_is_nats_per_byte_over_ln2_exactly_for_bytes(make_cfg):
    cfg = make_cfg("train.steps=8", "data.unique_tokens=5000")
    s = train.run(cfg)
    rows = [json.loads(x) for x in (runs.run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["eval_bpb"] == r["eval_loss"] / math.log(2) for r in rows)
    assert s["final_eval_bpb"] == s["final_eval_loss"] / math.log(2)
    assert s["eval_bytes"] == s["eval_tokens"] and s["tokenizer"] == "bytes" and s["tokenizer_vocab"] == 256


def test_bpe_bytes_per_token_count_the_text_exactly(bpe_corpus):
    c = bpe_corpus["corpus"]
    # The validation text's UTF-8 bytes (one per separator), counted from the documents and token by token.
    assert c.fingerprint["val_bytes"] == c.fingerprint["val_bytes_from_tokens"]
    assert c.fingerprint["val_bytes"] / c.fingerprint["val_tokens"] > 2  # BPE tokens hold several bytes
    val = data.eval_batches(c, 32, 16)
    decoded = sum(len(c.tokenizer.hf.decode([int(t) for t in w[1:]]).encode()) + int((w[1:] == c.tokenizer.separator).sum())
                  for w in val.reshape(-1, val.shape[-1]))
    assert abs(data.eval_bytes(c, val) - decoded) <= 2 * len(val.reshape(-1, val.shape[-1]))  # cut characters


# ---- end to end ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["parquet-bpe", "jsonl-bytes", "tokenizer.json", "uint16-shards"])
def test_each_kind_of_corpus_trains_end_to_end(make_cfg, corpora, bpe_corpus, kind):
    overrides = {
        "parquet-bpe": [f"data.corpus={corpora['parquet']}/*.parquet", "data.tokenizer=bpe", "data.vocab_size=384"],
        "jsonl-bytes": [f"data.corpus={corpora['jsonl']}"],
        "tokenizer.json": [f"data.corpus={corpora['jsonl']}", f"data.tokenizer={bpe_corpus['tokenizer']}"],
        "uint16-shards": [f"data.corpus={bpe_corpus['shards']}"],
    }[kind]
    s = train.run(make_cfg("train.steps=12", *overrides))
    assert s["status"] == "completed"
    assert math.isfinite(s["final_eval_loss"]) and math.isfinite(s["final_eval_bpb"])
    name, vocab = {"parquet-bpe": ("bpe", 384), "jsonl-bytes": ("bytes", 256)}.get(
        kind, (str(bpe_corpus["tokenizer"] if kind == "tokenizer.json" else bpe_corpus["shards"] / "tokenizer.json"),
               512))
    assert (s["tokenizer"], s["tokenizer_vocab"], s["vocab"]) == (name, vocab, tokenizer.padded(vocab))
    assert s["final_eval_bpb"] == pytest.approx(s["final_eval_loss"] * s["eval_tokens"] / s["eval_bytes"] / math.log(2))


def test_a_bpe_sweep_is_collected_fitted_and_reported_in_bits_per_byte(tmp_path, corpora, cache_dir):
    from analysis import cli as analysis_cli
    from scaling import collect

    sweep = tmp_path / "bpe.yaml"
    sweep.write_text(f"name: bpe\nn_boot: 20\nloss: bpb\noverrides: [launcher=basic, {', '.join(_tiny())}, "
                     f"data.corpus={corpora['parquet']}, data.tokenizer=bpe, data.vocab_size=320]\n"
                     "grids:\n  - model: [s01, s01a]\n    train.steps: [8, 16]\n")
    out = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(sweep), f"results_dir={tmp_path / 'r'}",
                          f"data.cache_dir={os.environ['SCALING_CACHE']}"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "r" / "bpe"
    table = pd.read_csv(folder / "runs.csv")
    assert len(table) == 4 and set(table["tokenizer"]) == {"bpe"} and (table["bpb"] < table["loss"]).all()
    report = (folder / "report.md").read_text()
    assert "loss in bits / byte" in report
    fit = json.loads((folder / "fit.json").read_text())
    assert fit["n_rows"] == 4
    assert analysis_cli.main("fit", [str(folder), "--loss", "bpb", "--n-boot", "0"]) == 0
    assert "bits / byte" in (folder / "report.md").read_text()
    curves = collect.collect(folder, write=False)[1]
    assert curves["eval_bpb"].notna().all()


# ---- identity and safety -------------------------------------------------------------------------------------

def test_a_resume_on_changed_data_is_refused(make_cfg, tmp_path, monkeypatch):
    corpus = tmp_path / "text"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"f{i:02d}.txt").write_text(f"line {i} of some text\n" * 200)
    cfg = make_cfg(f"data.corpus={corpus}", "train.steps=40")
    with monkeypatch.context() as m:
        m.setattr(engine, "Stop", StopAfter(2))
        assert train.run(cfg)["status"] == "interrupted"
    original = (corpus / "f03.txt").read_text()
    (corpus / "f03.txt").write_text(original.replace("some", "other"))
    with pytest.raises(ConfigError, match="not resumed on other data"):
        train.run(cfg)
    (corpus / "f03.txt").write_text(original)  # the same text again (a new modification time): it resumes
    s = train.run(cfg)
    assert s["status"] == "completed" and s["resumed_from_step"] > 0


def _bad_jsonl_field(folder):
    (folder / "b.jsonl").write_text('{"body": "some text"}\n' * 5)
    return "b.jsonl", "no record has a non-empty field 'text'"


def _bad_parquet_column(folder):
    pq.write_table(pa.table({"body": ["some text"] * 5}), folder / "b.parquet")
    return "b.parquet", "no column 'text'"


def _non_text_parquet(folder):
    pq.write_table(pa.table({"text": [1, 2, 3]}), folder / "b.parquet")
    return "b.parquet", "holds int64, not text"


def _non_text_jsonl(folder):
    (folder / "b.jsonl").write_text('{"text": 12}\n' * 5)
    return "b.jsonl", "holds numbers, not text"


def _empty_shard(folder):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), folder / "b.parquet")
    return "b.parquet", "an empty shard"


def _corrupt_parquet(folder):
    (folder / "b.parquet").write_bytes((folder / "a.parquet").read_bytes()[:200])
    return "b.parquet", "not a readable Parquet file"


def _corrupt_gzip(folder):
    (folder / "a.parquet").unlink()
    (folder / "a.jsonl").write_text('{"text": "fine"}\n' * 50)
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "some text"}\n' * 2000)[:150])
    return "b.jsonl.gz", "cannot be decompressed"


BAD = {"missing JSONL field": _bad_jsonl_field, "missing Parquet column": _bad_parquet_column,
       "non-text Parquet column": _non_text_parquet, "non-text JSONL field": _non_text_jsonl,
       "empty shard": _empty_shard, "corrupt Parquet": _corrupt_parquet, "corrupt gzip": _corrupt_gzip}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_document_file_is_one_line_naming_it_and_leaves_no_cache(tmp_path, case):
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"text": make_docs(50)}), folder / "a.parquet")  # read first, then the bad file
    name, what = BAD[case](folder)
    cache = tmp_path / "cache"
    for tok in ("bytes", "bpe"):
        with pytest.raises(ConfigError) as e:
            data.load_corpus(str(folder), cache_dir=str(cache), tokenizer_spec=tok, vocab_size=300)
        assert str(folder / name) in str(e.value) and what in str(e.value) and "\n" not in str(e.value)
        assert leftovers(cache) == []


def test_a_token_beyond_the_vocabulary_is_refused(bpe_corpus, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(bpe_corpus["shards"], folder)
    tokens = np.fromfile(folder / "train.bin", np.uint16)
    tokens[1000] = 600  # the tokenizer has 512 tokens
    tokens.tofile(folder / "train.bin")
    with pytest.raises(ConfigError, match=r"train.bin: token id 600 \(at token 1,000\) is beyond the vocabulary of 512"):
        data.load_corpus(str(folder), cache_dir=str(tmp_path / "cache"))
    assert leftovers(tmp_path / "cache") == []


def test_a_tokenizer_json_that_does_not_load_is_one_line(corpora, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 3}}')
    with pytest.raises(ConfigError, match=f"{bad}: not a loadable tokenizer.json"):
        data.load_corpus(str(corpora["jsonl"]), cache_dir=str(tmp_path / "cache"), tokenizer_spec=str(bad))
    assert leftovers(tmp_path / "cache") == []
    # From the command line: exit 2, one line, no traceback, nothing trained.
    out = subprocess.run([sys.executable, "-m", "scaling.cli", "train", *_tiny(), f"data.corpus={corpora['jsonl']}",
                          f"data.tokenizer={bad}", f"results_dir={tmp_path / 'r'}",
                          f"data.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, check=False)
    errors = [line for line in out.stderr.splitlines() if "INFO" not in line]
    assert out.returncode == 2 and len(errors) == 1 and "not a loadable tokenizer.json" in errors[0], out.stderr


def test_copy_rate_counts_bytes_predicted_by_the_last_earlier_match():
    w = np.frombuffer(b"abcdefghabcdefgh", np.uint8)[None]
    # In the second copy, f, g and h follow an earlier occurrence of their 5 preceding bytes, 8 bytes back.
    assert data.copy_rate(w, 5, 128) == pytest.approx(3 / 15)
    assert data.copy_rate(w, 5, 7) == 0.0  # beyond reach
    # The most recent occurrence decides: after "xyzuv" came "1" and later "2", so the third "xyzuv" predicts "2".
    w = np.frombuffer(b"xyzuv1xyzuv2xyzuv2", np.uint8)[None]
    assert data.copy_rate(w, 5, 128) == pytest.approx(1 / 17)


def test_scaling_corpus_describes_a_corpus(corpora, tmp_path, capsys):
    from scaling import cli

    assert cli.main(["corpus", f"data.corpus={corpora['parquet']}", f"data.cache_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "documents, 3 files, 400 documents" in out and "1.000 bytes per token" in out and "copying: " in out
    assert cli.main(["corpus", "data.corpus=/no/such/place", f"data.cache_dir={tmp_path}"]) == 2
    assert "matches no file" in capsys.readouterr().err
