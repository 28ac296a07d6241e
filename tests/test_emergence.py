"""The emergence detector on synthetic and published curves, and the probe tasks' formats and metrics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis import emergence as em
from scaling import probes
from scaling.config import ProbeConfig

DATA = Path(__file__).parent / "data"
X = np.log10(np.geomspace(1e4, 1e8, 9))
ITEMS = 400


def binomial(p, rng):
    return rng.binomial(ITEMS, np.clip(p, 0, 1)) / ITEMS


def exact_match(y, **kw):
    return em.Series("task", "exact_match", "N", X, y, chance=0.0, ceiling=1.0, n_items=np.full(len(X), ITEMS), **kw)


def test_sharp_sigmoid_is_flagged_at_its_threshold():
    rng = np.random.default_rng(0)
    r = em.analyse([exact_match(binomial(0.9 / (1 + np.exp(-(X - 6) / 0.08)), rng))], n_boot=200)[0]
    assert r["verdict"] == "emergent", r
    assert r["threshold_low"] <= 1e6 <= r["threshold_high"]
    assert 10 ** 5.5 < r["threshold"] < 10 ** 6.5 and r["width_decades"] < 1


@pytest.mark.parametrize("curve", ["power", "linear", "flat"])
def test_smooth_and_flat_curves_are_not_flagged(curve):
    rng = np.random.default_rng(1)
    p = {"power": 1 - 1.5 * (10 ** X) ** -0.1, "linear": 0.1 * (X - 3.5), "flat": np.full(len(X), 0.02)}[curve]
    r = em.analyse([exact_match(binomial(p, rng))], n_boot=200)[0]
    assert r["verdict"] in ("smooth", "flat"), r
    assert r["verdict"] == ("flat" if curve == "flat" else "smooth")


def test_false_flag_rate_on_pure_noise_is_at_most_five_percent():
    rng = np.random.default_rng(2)
    flagged = 0
    for trial in range(60):  # binomial noise around chance, and Gaussian noise with no chance level given
        if trial % 2:
            s = exact_match(binomial(np.full(len(X), 0.05), rng))
        else:
            s = em.Series("task", "accuracy", "N", X, 0.3 + rng.normal(0, 0.05, len(X)))
        flagged += em.analyse([s], n_boot=100, seed=trial)[0]["verdict"] in em.FLAGGED
    assert flagged / 60 <= 0.05


def test_discontinuous_jump_with_smooth_counterpart_is_a_metric_artefact():
    rng = np.random.default_rng(3)
    jump = exact_match(binomial(0.9 / (1 + np.exp(-(X - 6) / 0.08)), rng), counterpart="logprob")
    smooth = em.Series("task", "logprob", "N", X, -8 + 0.9 * (X - 4) + rng.normal(0, 0.05, len(X)),
                       discontinuous=False)
    by = {r["metric"]: r for r in em.analyse([jump, smooth], n_boot=200)}
    assert by["logprob"]["verdict"] == "smooth"
    assert by["exact_match"]["verdict"] == "metric artefact"
    assert by["exact_match"]["counterpart_verdict"] == "smooth"


def test_jump_between_grid_points_further_apart_than_a_decade_is_unresolved():
    x = np.log10([1e3, 1e4, 1e5, 1e7, 1e8, 1e9])
    s = em.Series("task", "exact_match", "N", x, np.array([0.0, 0.0, 0.0025, 0.9, 0.9, 0.9]), chance=0.0,
                  ceiling=1.0, n_items=np.full(6, ITEMS))
    r = em.analyse([s], n_boot=200)[0]
    assert r["verdict"] == "unresolved" and r["grid_gap"] == pytest.approx(2.0)


def test_caballero_4_digit_addition_breaks_between_550_and_700_examples():
    df = pd.read_csv(DATA / "caballero2022_bnsl_4digit_addition.csv")
    [s] = em.series_from_frame(df, ["test_cross_entropy"], ["train_dataset_size"])
    assert not s.higher_is_better
    r = em.analyse([s], n_boot=200)[0]
    assert r["verdict"] in ("break", "emergent")  # no chance level is given, so the floor is estimated
    assert 550 <= r["threshold"] <= 700 and 550 <= r["threshold_low"] and r["threshold_high"] <= 700
    assert 550 <= r["bnsl_break"] <= 700  # the authors' one-break fit: d1 = 612.6


def test_emergence_cli_on_a_published_table(tmp_path):
    rng = np.random.default_rng(4)
    n = np.geomspace(1e7, 1e11, 10)
    y = binomial(0.8 / (1 + np.exp(-(np.log10(n) - 9.5) / 0.1)), rng)
    table = tmp_path / "evals.csv"
    pd.DataFrame({"params": n, "arith/exact_match": y, "arith/logprob": -6 + np.log10(n) * 0.5}).to_csv(table)
    r = subprocess.run([sys.executable, "-m", "scaling.cli", "emergence", str(table), "--axis", "params",
                        "--metric", "arith/exact_match", "--metric", "arith/logprob", "--chance",
                        "arith/exact_match=0", "--pair", "arith/exact_match=arith/logprob", "--n-boot", "100"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "emergence.json").read_text())
    by = {x["metric"]: x for x in doc["results"]}
    assert by["exact_match"]["verdict"] == "metric artefact" and by["logprob"]["verdict"] == "smooth"
    assert (tmp_path / "plots" / "emergence_arith_params.png").exists()
    bad = subprocess.run([sys.executable, "-m", "scaling.cli", "emergence", str(table), "--metric", "nope"],
                         check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and "columns not in the table: ['nope'" in bad.stderr


def test_a_counterpart_that_jumps_too_makes_the_jump_real_not_an_artefact():
    rs = [{"task": "t", "metric": "exact_match", "axis": "C", "group": None, "discontinuous": True,
           "counterpart": "logprob", "verdict": "emergent"},
          {"task": "t", "metric": "logprob", "axis": "C", "group": None, "discontinuous": False,
           "counterpart": None, "verdict": "break"}]
    em.pair_artefacts(rs)
    assert rs[0]["verdict"] == "emergent" and rs[0]["counterpart_verdict"] == "break"
    rs[1]["verdict"], rs[0]["verdict"] = "smooth", "emergent"
    em.pair_artefacts(rs)
    assert rs[0]["verdict"] == "metric artefact"


def test_bootstrap_is_large_enough_for_the_correction_to_reject():
    # With 20 resamples no p-value could go below 1/21 and Holm over 12 tests would need 0.1/12: nothing flagged.
    rng = np.random.default_rng(5)
    x = np.log10(np.geomspace(1e4, 1e8, 25))
    series = [em.Series("task", "exact_match", "N", x, binomial(0.9 / (1 + np.exp(-(x - 6) / 0.08)), rng),
                        chance=0.0, ceiling=1.0, n_items=np.full(len(x), ITEMS)) for _ in range(12)]
    rs = em.analyse(series, n_boot=20)
    assert all(r["n_boot"] >= 2 * 12 / em.SIGNIFICANCE for r in rs)
    assert sum(r["verdict"] == "emergent" for r in rs) >= 10


def _results_folder(tmp_path, train_fraction):
    """Two runs whose copy accuracy jumps during training at 1e11 and 4e11 FLOPs."""
    rng = np.random.default_rng(6)
    runs, curves = [], []
    for run_id, model, n, mid in (("aaaaaa01", "s02", 2.5e4, 11.0), ("bbbbbb02", "s03", 8.4e4, 11.6)):
        tokens = np.geomspace(1e4, 4e6, 30)
        c = 6 * n * tokens
        acc = binomial(1 / 26 + 0.9 / (1 + np.exp(-(np.log10(c) - mid) / 0.05)), rng)
        curves += [{"run_id": run_id, "model": model, "N": n, "step": i, "tokens_seen": t, "C": cc,
                    "probe/copy/exact_match": a} for i, (t, cc, a) in enumerate(zip(tokens, c, acc))]
        runs.append({"run_id": run_id, "model": model, "status": "completed", "N": n, "C": c[-1], "loss": 2.0,
                     "probe/copy/exact_match": acc[-1], "probe/copy/exact_match@chance": 1 / 26,
                     "probe/copy/exact_match@items": ITEMS, "probe_train_fraction": train_fraction})
    folder = tmp_path / f"results_{train_fraction}"
    folder.mkdir()
    pd.DataFrame(runs).to_parquet(folder / "runs.parquet")
    pd.DataFrame(curves).to_parquet(folder / "curves.parquet")
    return folder


def test_runs_trained_on_probes_are_also_analysed_over_training(tmp_path):
    from analysis import emergence_report

    results = emergence_report.build(_results_folder(tmp_path, 0.5), n_boot=100)
    over = {r["group"]: r for r in results if r["view"] == "checkpoints"}
    assert set(over) == {"s02", "s03"}
    assert over["s02"]["verdict"] == "emergent" and over["s02"]["threshold"] == pytest.approx(1e11, rel=0.15)
    assert over["s03"]["verdict"] == "emergent" and over["s03"]["threshold"] == pytest.approx(10**11.6, rel=0.15)
    md = (tmp_path / "results_0.5" / "emergence.md").read_text()
    assert "Over training" in md and "emergence_over_training_copy_C" in md
    eval_only = emergence_report.build(_results_folder(tmp_path, 0.0), n_boot=100)
    assert {r["view"] for r in eval_only} == {"runs"}


def probe_cfg(**kw):
    return OmegaConf.structured(ProbeConfig(tasks=["addition", "copy", "modular"], **kw))


def test_probe_mix_is_a_pure_function_of_seed_and_step():
    tasks = probes.tasks(probe_cfg(train_fraction=0.5))
    a = probes.mix(np.zeros((4, 8, 65), np.int32), 10, tasks, 0.5, seed=1)
    b = probes.mix(np.zeros((4, 8, 65), np.int32), 10, tasks, 0.5, seed=1)
    assert (a == b).all() and 0 < (a.sum(-1) > 0).mean() < 1
    text = bytes(a[a.sum(-1) > 0][0].astype(np.uint8))
    assert b"=" in text or b"|" in text


def test_modular_training_never_shows_held_out_pairs():
    task = probes.tasks(probe_cfg(modulus=11))[2]
    rng = np.random.default_rng(0)
    train = {task.example(rng)[0] for _ in range(3000)}
    held = {task.example(rng, held_out=True)[0] for _ in range(300)}
    assert train and held and not train & held


def test_probe_scores_are_exact_for_perfect_and_chance_predictions():
    for task in probes.tasks(probe_cfg()):
        es = probes.eval_set(task, 20, 64)
        lp_perfect = np.zeros(es.rows[:, 1:].shape)
        scores = probes.score(es, lp_perfect, np.ones_like(lp_perfect, bool))
        assert scores[f"probe/{task.name}/exact_match"] == 1.0
        miss = probes.score(es, lp_perfect - 3.0, np.zeros_like(lp_perfect, bool))
        assert miss[f"probe/{task.name}/exact_match"] == 0.0
        if task.name == "copy":  # the repeat no easier than the first copy: no in-context learning
            assert miss["probe/copy/icl_score"] == pytest.approx(0.0)
            assert miss["probe/copy/token_accuracy"] == 0.0


# Ruan et al. (2024): 2-shot evaluations of 65 base LLMs of 18 families with their training FLOPs (data/README.md)
RUAN = {"arithmetic_2da_2_acc": 0, "arithmetic_2dm_2_acc": 0, "arithmetic_3da_2_acc": 0, "arithmetic_3ds_2_acc": 0,
        "word_unscrambling_2_exact_match": 0, "hellaswag": 0.25, "winograd": 0.5, "arc_c": 0.25}


@pytest.fixture(scope="module")
def ruan_pooled():
    df = pd.read_csv(DATA / "ruan2024_base_llm_evals.csv")
    return {r["task"]: r for r in em.analyse(em.series_from_frame(df, list(RUAN), ["flops"], chance=RUAN), n_boot=200)}


@pytest.mark.parametrize("task", ["arithmetic_2da_2_acc", "arithmetic_2dm_2_acc", "arithmetic_3da_2_acc",
                                  "arithmetic_3ds_2_acc"])
def test_arithmetic_across_llm_families_is_flagged_near_1e22_to_1e23_flops(ruan_pooled, task):
    # at 0 below about 1e22 FLOPs and near 1 above 1e23, pooled over families whose efficiency differs: broad
    r = ruan_pooled[task]
    assert r["verdict"] in em.FLAGGED and r["survives_correction"], r
    assert 1e22 <= r["threshold"] <= 1e23 and r["threshold_low"] < r["threshold"] < r["threshold_high"]


def test_word_unscrambling_is_flagged_and_smooth_benchmarks_are_not(ruan_pooled):
    assert ruan_pooled["word_unscrambling_2_exact_match"]["verdict"] in em.FLAGGED
    for task in ("hellaswag", "winograd", "arc_c"):
        assert ruan_pooled[task]["verdict"] in ("smooth", "flat"), ruan_pooled[task]


def test_smooth_benchmarks_of_one_family_are_not_flagged():
    df = pd.read_csv(DATA / "ruan2024_base_llm_evals.csv")
    smooth = {k: RUAN[k] for k in ("hellaswag", "winograd", "arc_c")}
    results = em.analyse(em.series_from_frame(df, list(smooth), ["flops"], chance=smooth, group="family"), n_boot=100)
    assert not [r for r in results if r["verdict"] in em.FLAGGED]


def test_a_broad_rise_that_falls_back_at_the_top_is_still_flagged():
    rng = np.random.default_rng(7)
    x = np.sort(rng.uniform(19, 25, 60))
    y = 0.95 / (1 + np.exp(-(x - 22.5) / 0.6)) + rng.normal(0, 0.05, len(x))
    y[x > 24.2] -= 0.3  # the largest models lose part of the ability
    r = em.analyse([em.Series("task", "accuracy", "flops", x, np.clip(y, 0, 1), chance=0.0)], n_boot=200)[0]
    assert r["verdict"] in em.FLAGGED, r
    assert 10 ** 22 < r["threshold"] < 10 ** 23


def test_scattered_smooth_rises_are_not_flagged_as_gradual():
    flagged = 0
    for seed in range(20):  # a line in log scale with family-like scatter, and a power law on the error
        rng = np.random.default_rng(seed)
        x = np.sort(rng.uniform(19, 25, 60))
        trend = 0.15 * (x - 19) if seed % 2 else 1 - 0.9 * 10 ** (-0.25 * (x - 19))
        y = np.clip(trend + rng.normal(0, 0.08, len(x)), 0, 1)
        flagged += em.analyse([em.Series("task", "accuracy", "flops", x, y, chance=0.0)], n_boot=100,
                              seed=seed)[0]["verdict"] in em.FLAGGED
    assert flagged <= 1


def test_two_failed_evaluations_at_the_top_do_not_hide_a_rise():
    # ObsScaling's IPA transliteration (emergent by its BLEU counterpart): Qwen-72B and Qwen1.5-72B score 0.014 and
    # 0.008 exact match at 1.3e24 FLOPs, where every other model above 1e23 scores 0.05 to 0.34. Least squares let
    # those two points call the rise smooth; under Student-t errors they weigh little in every form
    df = pd.read_csv(DATA / "ruan2024_base_llm_evals.csv")
    exact, bleu = "ipa_transliterate_2_exact_match", "ipa_transliterate_2_bleu"
    results = {r["metric"]: r for r in em.analyse(em.series_from_frame(
        df, [exact, bleu], ["flops"], chance={exact: 0, bleu: 0}, pairs={exact: bleu}), n_boot=200)}
    r = results[exact]
    assert r["verdict"] in em.FLAGGED and r["survives_correction"], r
    assert r["counterpart_verdict"] in em.FLAGGED and r["outliers"] == 2, r
    assert 1e23 < r["threshold"] < 1e24 and r["threshold_low"] < r["threshold"] < r["threshold_high"]


def test_smooth_rises_with_two_failed_evaluations_are_not_flagged():
    flagged = 0
    for seed in range(10):  # a line in log scale with family-like scatter; two of the largest models score ~0
        rng = np.random.default_rng(seed)
        x = np.sort(rng.uniform(19, 25, 60))
        y = np.clip(0.15 * (x - 19) + rng.normal(0, 0.05, len(x)), 0, 1)
        y[-4:-2] = 0.01
        flagged += em.analyse([em.Series("task", "accuracy", "flops", x, y, chance=0.0)], n_boot=100,
                              seed=seed)[0]["verdict"] in em.FLAGGED
    assert flagged <= 1
