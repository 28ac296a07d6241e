import numpy as np
import pytest
from flax import nnx

from scaling import sizes
from scaling.model import Transformer, count_tree_params


@pytest.mark.parametrize("shape", [
    sizes.ladder_shape("s01"), sizes.ladder_shape("s04", seq_len=64),
    sizes.Shape(n_layers=2, d_model=40, n_heads=5, d_ff=72, seq_len=24, vocab=300),
])
def test_analytic_count_equals_parameter_tree(shape):
    counts = sizes.count_params(shape)
    model = Transformer(shape, nnx.Rngs(0))
    assert counts["N_total"] == count_tree_params(model)
    # N excludes exactly the token and position embeddings (the output projection is tied).
    assert counts["N_embedding"] == model.embed.embedding.size + model.pos.embedding.size
    assert counts["N"] + counts["N_embedding"] == counts["N_total"]


def test_ladder_spans_three_decades_with_one_aspect_ratio():
    shapes = [sizes.ladder_shape(n) for n in sizes.SMALL_NAMES]
    n = [sizes.count_params(s)["N"] for s in shapes]
    assert n == sorted(n) and n[-1] / n[0] > 1e3
    assert n[0] < 5e3 and n[-1] > 1e7
    assert {s.d_model / s.n_layers for s in shapes} == {sizes.ASPECT_RATIO}


def test_ladder_has_four_heads_or_as_many_16_wide_ones_as_fit():
    heads = {n: (s.n_heads, s.d_model // s.n_heads) for n in sizes.SMALL_NAMES for s in [sizes.ladder_shape(n)]}
    assert [heads[n] for n in ("s01", "s02", "s03", "s04")] == [(1, 16), (2, 16), (3, 16), (4, 16)]
    assert heads["s08"] == (4, 32) and heads["s12"] == (4, 64)
    for n, (h, width) in heads.items():  # at most four heads, none narrower than 16, and 16-wide until there are four
        assert h <= sizes.MAX_HEADS and width >= sizes.MIN_HEAD_DIM, n
        assert h == sizes.MAX_HEADS or width == sizes.MIN_HEAD_DIM, n


def test_large_ladder_reaches_1e9_at_aspect_64_with_64_wide_heads():
    shapes = [sizes.ladder_shape(n) for n in sizes.SIZE_NAMES]
    n = [sizes.count_params(s)["N"] for s in shapes]
    assert n == sorted(n)  # the large ladder continues the small one
    large = [sizes.ladder_shape(x) for x in sizes.LARGE_NAMES]
    assert sizes.LARGE_NAMES[0] == "s13" and 2e7 < n[len(sizes.SMALL_NAMES)] and 1e9 < n[-1] < 1.2e9
    for s in large:
        assert s.d_model == 64 * s.n_layers and s.d_model // s.n_heads == 64 and s.d_ff == 4 * s.d_model
    # N ~ 12 n_layers d_model^2: s15 is GPT-3 Small's shape (12 layers, 768 wide, 12 heads of 64)
    assert (large[2].n_layers, large[2].d_model, large[2].n_heads) == (12, 768, 12)
    assert abs(n[len(sizes.SMALL_NAMES) + 2] / (12 * 12 * 768**2) - 1) < 0.01


def test_flop_conventions():
    s = sizes.ladder_shape("s03")
    c, f = sizes.count_params(s), sizes.flops_per_token(s)
    assert f["flops"] == 6 * c["N"]
    assert f["flops_with_attention"] - f["flops"] == 12 * s.n_layers * s.seq_len * s.d_model
    assert f["flops_total_params"] == 6 * c["N_total"]


def test_unknown_size_and_bad_shape_are_named():
    with pytest.raises(ValueError, match="unknown model size 's99'.*s01"):
        sizes.ladder_shape("s99")
    with pytest.raises(ValueError, match="model.d_model .* divisible by model.n_heads"):
        sizes.Shape(2, 30, 4, 64, 16)
    with pytest.raises(ValueError, match="model.n_layers must be a positive integer"):
        sizes.Shape(0, 32, 2, 64, 16)


def test_fine_ladder_fills_the_steps_between_ladder_sizes():
    names = [n for n in sizes.ALL_SIZE_NAMES if "s02" <= n[:3] <= "s08"]
    n = [sizes.count_params(sizes.ladder_shape(x))["N"] for x in names]
    assert names[:4] == ["s02", "s02a", "s02b", "s03"] and names[-1] == "s08"
    assert n == sorted(n)
    ratios = np.array(n[1:]) / np.array(n[:-1])
    assert ratios.min() > 1.1 and ratios.max() < 1.6, ratios  # 1.14x to 1.55x per fine step from s02
    for x in sizes.FINE_NAMES:  # sNNa: widened by 8; sNNb: and one layer deeper; heads divide the width
        s, base = sizes.ladder_shape(x), sizes.ladder_shape(x[:3])
        assert s.d_model == base.d_model + 8 and s.n_layers == base.n_layers + (x[-1] == "b")
        assert s.d_model % s.n_heads == 0 and s.n_heads <= sizes.MAX_HEADS
    with pytest.raises(ValueError, match="unknown model size 's08a'.*s02a"):
        sizes.ladder_shape("s08a")


def test_default_learning_rate_is_the_measured_width_rule_scaled_by_the_batch(make_cfg):
    from scaling import plan

    assert sizes.default_learning_rate(32) == pytest.approx(0.02)  # the cap: s02's best scanned rate
    assert sizes.default_learning_rate(48) == pytest.approx(0.64 / 48)  # 0.64 / d_model above it
    assert sizes.default_learning_rate(24) == pytest.approx(0.02)
    assert sizes.default_learning_rate(32, 512) == pytest.approx(0.01)  # sqrt(512 / 2048) = 1/2
    cfg = make_cfg("model=s03", "train.batch_size=4", "optim.lr=null")  # 4 x seq_len tokens per step
    shape = plan.shape_of(cfg)
    assert plan.peak_lr(cfg, shape, 10**6) == pytest.approx(0.64 / 48 * (4 * shape.seq_len / 2048) ** 0.5)


def test_the_horizon_lowers_the_default_rate_of_long_runs_only(make_cfg):
    from scaling import plan

    assert sizes.horizon_factor(2_000, 3_000, 0.5) == 1.0  # shorter than the horizon: the width rule
    assert sizes.horizon_factor(3_000, 3_000, 0.5) == 1.0
    assert sizes.horizon_factor(12_000, 3_000, 0.5) == pytest.approx(0.5)
    assert sizes.horizon_factor(24_000, 3_000, 1 / 3) == pytest.approx(0.5)
    assert sizes.horizon_factor(10**6, None, 0.5) == 1.0  # no horizon set
    cfg = make_cfg("model=s02", "train.batch_size=4", "optim.lr=null", "train.steps=12000",
                   "optim.lr_horizon_steps=3000")
    rule = sizes.default_learning_rate(32, 4 * cfg.model.seq_len)  # s02 is 32 wide
    assert plan.plan_run(cfg).peak_lr == pytest.approx(rule * 0.5)  # x (3000 / 12000) ** 0.5
    explicit = make_cfg("model=s02", "train.steps=12000", "optim.lr=0.003", "optim.lr_horizon_steps=3000")
    assert plan.plan_run(explicit).peak_lr == 0.003  # an explicit rate is used as given
    short = make_cfg("model=s02", "train.batch_size=4", "optim.lr=null", "train.steps=500",
                     "optim.lr_horizon_steps=3000")
    assert plan.plan_run(short).peak_lr == pytest.approx(rule)


def test_the_sweep_plan_shows_each_runs_peak_rate(tmp_path):
    from scaling import sweep_plan

    spec = {"name": "horizon", "overrides": ["train.batch_size=4", "optim.lr_horizon_steps=3000",
                                             f"results_dir={tmp_path}"],
            "grids": [{"model": ["s02"], "train.steps": [500, 12000]}]}
    rows = sweep_plan.plan(spec, [])
    assert [r.lr for r in rows] == pytest.approx([0.01, 0.005])  # s02 at 512 tokens per step; the long run halved
