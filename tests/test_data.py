import numpy as np
import pytest

from scaling import data
from scaling.config import ConfigError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import os

    return data.load_corpus("stdlib", cache_dir=os.environ.get("SCALING_TEST_CACHE")
                            or str(tmp_path_factory.mktemp("c")))


def test_stdlib_corpus_and_fingerprint(corpus):
    fp = corpus.fingerprint
    assert fp["files"] > 500 and fp["bytes"] > 10e6
    assert fp["train_tokens"] + fp["val_tokens"] == fp["bytes"] + fp["files"]  # one separator per file
    assert len(fp["content_sha256"]) == 64 and fp["python"]
    # Byte-level text: the unigram entropy is far below uniform (ln 256 = 5.55 nats).
    assert 2.5 < data.unigram_entropy(corpus.val[:1_000_000]) < 5.0


def test_batches_are_a_pure_function_of_seed_and_step(corpus):
    a = data.Batches(corpus, 100_000, 32, 8, seed=3)
    b = data.Batches(corpus, 100_000, 32, 8, seed=3)
    np.testing.assert_array_equal(a.get(17, 3), b.get(17, 3))
    np.testing.assert_array_equal(a.get(17, 3)[1], b.get(18, 1)[0])  # chunking does not matter
    assert not np.array_equal(a.get(5), data.Batches(corpus, 100_000, 32, 8, seed=4).get(5))


def test_d_prefix_and_epochs(corpus):
    d, seq, bs = 32 * 50 + 1, 32, 10  # exactly 50 windows
    b = data.Batches(corpus, d, seq, bs, seed=0)
    assert b.n_windows == 50
    windows = b.windows(0, 10)  # 100 examples = two epochs
    for epoch in (windows.ravel()[:50], windows.ravel()[50:]):
        assert sorted(epoch) == list(range(50))  # every window exactly once per epoch
    tokens = b.get(0, 10)
    prefix = np.asarray(corpus.train[:d])
    for w, row in zip(windows.ravel(), tokens.reshape(-1, seq + 1)):
        np.testing.assert_array_equal(row, prefix[w * seq: w * seq + seq + 1])


def test_too_many_unique_tokens_is_a_clear_error(corpus):
    with pytest.raises(ConfigError, match="data.unique_tokens=.* exceeds the corpus training split"):
        data.Batches(corpus, corpus.n_train + 1, 32, 8, 0)


def test_validation_set_is_fixed(corpus):
    a = data.eval_windows(corpus, 32, 64)
    np.testing.assert_array_equal(a, data.eval_windows(corpus, 32, 64))
    assert a.shape == (64, 33)


def test_user_corpus_folder(text_corpus, tmp_path):
    c = data.load_corpus(str(text_corpus), val_fraction=0.2, cache_dir=str(tmp_path))
    assert c.fingerprint["files"] == 40 and c.fingerprint["val_files"] > 0
    text = bytes(np.asarray(c.train[:200])).decode()
    assert "def f" in text
    with pytest.raises(ConfigError, match="matches no file"):
        data.load_corpus(str(tmp_path / "nothing*.txt"), cache_dir=str(tmp_path))


def test_token_file(tmp_path):
    path = tmp_path / "toks.u16"
    np.arange(5000, dtype=np.uint16).tofile(path)
    c = data.load_corpus(str(path), val_fraction=0.1)
    assert c.vocab == 5000 and c.n_train == 4500 and int(c.val[0]) == 4500
