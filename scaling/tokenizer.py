"""Tokenizers: bytes (the default), a byte-level BPE trained on the corpus, or a user's tokenizer.json.

`data.tokenizer` picks one:

* ``bytes`` -- one token per byte of UTF-8, vocabulary 256, the NUL byte between documents.
* ``bpe`` -- a byte-level BPE (GPT-2's pre-tokenisation and byte alphabet) trained with Hugging Face `tokenizers`
  on the training split only, to ``data.vocab_size`` tokens with ``<|endoftext|>`` between documents. Training
  is deterministic (the same text and settings give the same merges, byte for byte) and cached by the training
  split's content and the settings, under <cache>/tokenizers/.
* a path to a ``tokenizer.json`` (GPT-2's, Llama's, the user's own): used as it is, without the special tokens its
  post-processor would add; documents are separated by its end-of-text token (the first of EOT_NAMES it has).

The model's vocabulary is the tokenizer's, padded to a multiple of 64 (VOCAB_MULTIPLE): the matrix shapes stay
friendly to the hardware, and the padding rows are never a target.

Bits per byte (scaling.data.eval_bytes) needs the number of bytes each token stands for: ``byte_lengths``. Under
the byte tokenizer every token is one byte; the separator always counts as one byte, as the NUL byte does, so bits
per byte of one corpus agree across tokenizers. For byte-level BPE (the tokens are GPT-2's printable stand-ins for
bytes) the lengths are exact; for SentencePiece-style vocabularies ("\u2581" for a space, "<0x0A>" byte fallback)
they are exact too; other special tokens count zero bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaling.config import ConfigError

BYTES, BPE = "bytes", "bpe"
VOCAB_MULTIPLE = 64
EOT = "<|endoftext|>"
EOT_NAMES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")
RECIPE_VERSION = 1  # bump when the BPE recipe below changes: cached tokenizers of another recipe are retrained


def padded(vocab: int) -> int:
    """The model's vocabulary for a tokenizer of `vocab` tokens: the next multiple of VOCAB_MULTIPLE."""
    return -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def token_dtype(vocab: int):
    """The smallest unsigned integer type that holds every token id."""
    return np.uint8 if vocab <= 256 else np.uint16 if vocab <= 2**16 else np.uint32


@dataclass
class Tokenizer:
    """name: 'bytes', 'bpe' or the tokenizer.json's path; vocab: its real size; separator: the id between
    documents; byte_lengths: bytes each id stands for (float64, length vocab); fingerprint: sha256 of its
    serialised form; hf: the `tokenizers.Tokenizer` (None for bytes)."""

    name: str
    vocab: int
    separator: int
    byte_lengths: np.ndarray = field(repr=False)
    fingerprint: str
    hf: object = field(default=None, repr=False)

    @property
    def dtype(self):
        return token_dtype(self.vocab)

    def encode(self, texts: list) -> list[np.ndarray]:
        """Token ids of each text (no separator), in the tokenizer's dtype; the byte tokenizer also takes bytes as
        they are. `tokenizers` encodes a batch on every core."""
        if self.hf is None:
            return [np.frombuffer(t if isinstance(t, bytes) else t.encode("utf-8", "replace"), np.uint8)
                    for t in texts]
        return [np.asarray(e.ids, self.dtype) for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def describe(self) -> dict:
        """What a run's summary and the cache's meta.json record of it."""
        return {"tokenizer": self.name, "tokenizer_vocab": self.vocab, "tokenizer_sha256": self.fingerprint,
                "separator": self.separator}


BYTE_TOKENIZER = Tokenizer(BYTES, 256, 0, np.ones(256), BYTES)


def from_hf(hf, name: str) -> Tokenizer:
    """Wrap a `tokenizers.Tokenizer`; its end-of-text token separates documents."""
    vocab = hf.get_vocab_size(with_added_tokens=True)
    separator = next((i for n in EOT_NAMES if (i := hf.token_to_id(n)) is not None), None)
    if separator is None:
        raise ConfigError(f"tokenizer {name}: no end-of-text token to put between documents (looked for "
                          f"{', '.join(EOT_NAMES)}); add one of them to it as a special token")
    serial = hf.to_str()
    return Tokenizer(name, vocab, separator, _byte_lengths(hf, json.loads(serial), vocab, separator),
                     hashlib.sha256(serial.encode()).hexdigest(), hf)


@functools.cache
def _gpt2_byte_values() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (the ByteLevel pre-tokenizer's alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _uses_byte_level(node) -> bool:
    """Whether a tokenizer.json's pre-tokenizer or decoder (or one inside a Sequence) is ByteLevel."""
    if isinstance(node, dict):
        return node.get("type") == "ByteLevel" or any(_uses_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_uses_byte_level(v) for v in node)
    return False


def _byte_lengths(hf, spec: dict, vocab: int, separator: int) -> np.ndarray:
    byte_level = _uses_byte_level(spec.get("pre_tokenizer")) or _uses_byte_level(spec.get("decoder"))
    values = _gpt2_byte_values()
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    out = np.zeros(vocab)
    for i in range(vocab):
        token = hf.id_to_token(i)
        if token is None or i in special:
            continue
        if byte_level and all(c in values for c in token):
            out[i] = len(token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # SentencePiece byte fallback
            out[i] = 1
        else:
            out[i] = len(token.replace("\u2581", " ").removeprefix("##").encode())
    out[separator] = 1
    return out


def load_file(path: str) -> Tokenizer:
    """A user's tokenizer.json; one line naming the file when it does not load."""
    from tokenizers import Tokenizer as HF

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(f"data.tokenizer={path!r}: no such file; allowed: bytes, bpe, or the path of a "
                          f"tokenizer.json")
    try:
        hf = HF.from_file(str(p))
    except Exception as e:  # noqa: BLE001 -- `tokenizers` raises plain Exceptions with serde's message
        raise ConfigError(f"{p}: not a loadable tokenizer.json ({_first_line(e)})") from None
    return from_hf(hf, str(p))


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def train_bpe(texts: Iterable[str], vocab_size: int) -> object:
    """A byte-level BPE of vocab_size tokens trained on texts (a `tokenizers.Tokenizer`), deterministic."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    return hf


def trained_bpe(texts: Iterator[str], content_sha256: str, vocab_size: int, cache: Path) -> Tokenizer:
    """The BPE of vocab_size tokens for a training split whose content hashes to content_sha256: from the cache,
    else trained on texts and cached (atomically: a half-written file is never read)."""
    from tokenizers import Tokenizer as HF

    key = hashlib.sha256(f"{content_sha256} {vocab_size} {RECIPE_VERSION}".encode()).hexdigest()[:16]
    path = cache / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    if path.exists():
        return from_hf(HF.from_file(str(path)), BPE)
    hf = train_bpe(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    hf.save(str(tmp))
    tmp.replace(path)
    return from_hf(hf, BPE)


def model_vocab(spec: str, vocab_size: int, corpus: str) -> int:
    """The model's vocabulary (padded) for data.tokenizer, data.vocab_size and data.corpus: a BPE's is its setting,
    a tokenizer.json's is read from it, and a folder of token shards takes the tokenizer.json beside them."""
    if spec == BPE:
        return padded(vocab_size)
    if spec != BYTES:
        return padded(_file_vocab(str(Path(spec).expanduser().resolve())))
    beside = _tokenizer_beside(corpus)
    return padded(_file_vocab(beside)) if beside else BYTE_TOKENIZER.vocab


@functools.lru_cache(maxsize=64)
def _file_vocab(path: str) -> int:
    return load_file(path).vocab


@functools.lru_cache(maxsize=64)
def _tokenizer_beside(corpus: str) -> str | None:
    from scaling import sources

    if corpus in sources.EMBEDDED or Path(corpus).suffix in (".u8", ".u16"):
        return None
    try:
        return sources.find(corpus).tokenizer_beside()
    except ConfigError:  # a corpus that does not exist is reported where it is loaded
        return None
