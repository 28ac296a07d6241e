"""Shared fixtures: a tiny composed config, a small text corpus, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from scaling import devices
from scaling.config import register

register()
devices.use_every_core()  # as the entry points do: one JAX CPU device per core, before JAX's first operation

TINY = [
    "model=s01",
    "model.seq_len=32",
    "train.steps=24",
    "train.batch_size=8",
    "train.steps_per_dispatch=4",
    "train.n_evals=4",
    "train.progress=none",
    "data.eval_windows=32",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session, so the stdlib corpus is tokenized once."""
    path = Path(os.environ.get("SCALING_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["SCALING_CACHE"] = str(path)
    return path


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """make_cfg(*overrides) -> a composed config writing under tmp_path."""

    def make(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="scaling.conf", version_base="1.3"):
            return compose(
                config_name="config",
                overrides=[*TINY, f"results_dir={tmp_path / 'results'}", f"data.cache_dir={cache_dir}",
                           *overrides],
            )

    return make


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A folder of small text files (a user corpus)."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        lines = [f"def f{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(40)]
        (folder / f"mod{i:02d}.py").write_text("".join(lines))
    return folder
