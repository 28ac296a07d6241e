"""Model shapes, parameter counts and FLOP accounting: every counting convention lives here.

Conventions (the ones published scaling laws use, so each is recorded):

* ``N`` -- non-embedding parameters (Kaplan et al. 2020): every parameter except the token and position
  embeddings. The output projection is tied to the token embedding, so it is not counted either.
  Layer-norm scales and biases are counted (they are a few per mille of N).
* ``N_total`` -- every parameter in the model, embeddings included.
* ``flops`` = 6 * N * tokens_seen (Kaplan et al.; Hoffmann et al. use the same 6ND).
* ``flops_with_attention`` = (6 * N + 12 * n_layers * seq_len * d_model) * tokens_seen: the forward attention
  score and value products cost 4 * seq_len * d_model per token and layer (counted in full, not halved for
  the causal mask, as PaLM and nanoGPT count them); training is 3x the forward pass.
* ``flops_total_params`` = 6 * N_total * tokens_seen.
* Hardware FLOPs (for throughput and MFU only): the attention convention above plus the tied output
  projection (6 * vocab * d_model per token), which is real matrix work even though it is not in N.

The size ladder: one rule, a fixed aspect ratio d_model / n_layers = 16 with d_ff = 4 d_model and four heads
(as many 16-wide heads as fit below d_model 64), so the named sizes s01 ... s12 differ only in depth (1 ... 16
layers). Non-embedding N then grows as about 12 * n_layers * d_model**2 = 3072 * n_layers**3, from 3.2e3 (s01) to
1.3e7 (s12). The head count changes neither N nor the FLOP count, but each head has its own seq_len x seq_len
score matrix, and on a CPU that memory traffic, not the multiply-adds, sets the pace of attention: s12 with four
64-wide heads trains 1.29x faster than with sixteen 16-wide ones. Fewer heads than four cost quality at the small
end: with one head, s02 to s04 trained on probe text lost in-context copying (exact match 0.01 to 0.05 instead of
0.68 to 0.97) and 12% to 20% in evaluation loss, while four wider heads at s06 and s08 did as well as 6 and 8
16-wide ones (sweeps/heads.yaml; README, Performance).

The fine ladder puts two sizes between each pair of ladder sizes from s01 to s08, so that an IsoFLOP budget can
sample five sizes near its optimum: ``sNNa`` is sNN widened by 8 (same depth), ``sNNb`` is sNNa one layer deeper.
N grows by about 2x per fine step from s01 to s02 (3.2e3, 7.4e3, 1.4e4, 2.5e4) and by 1.14x to 1.55x from s02 to
s08 (s02, s02a, s02b, s03: 2.5e4, 3.9e4, 5.8e4, 8.4e4). Heads follow the same
rule as the ladder, using the largest count that divides the width (s03a, 56 wide: two heads of 28).

The large ladder (s13 ... s19, 2.5e7 to 1.1e9 non-embedding parameters) is for accelerators: d_model = 64 x
n_layers with 64-wide heads (n_heads = n_layers), d_ff = 4 d_model. Keeping aspect 16 would make 1e9 a stack of
69 layers 1,104 wide, whose sequential layers and narrow matrices fill a GPU poorly; at fixed N, loss varies by a
few per cent at most for aspect ratios from about 20 to 200 (Kaplan et al. 2020, Figure 5), and 64 is GPT-3
Small's (768 / 12) with GPT-3's head width. s12 already has 64-wide heads, so head width is constant from s12 up.
Per parameter, ``param_table`` lists shape and the axis tensor parallelism splits; counts, sharding
(scaling.devices) and per-device memory (scaling.memory) all read it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ASPECT_RATIO = 16  # d_model / n_layers
MAX_HEADS = 4
MIN_HEAD_DIM = 16
FFN_MULT = 4
LADDER_DEPTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)
LARGE_DEPTHS = (8, 10, 12, 16, 20, 24, 28)  # s13 ... s19
LARGE_ASPECT_RATIO = 64  # d_model / n_layers of the large ladder
LARGE_HEAD_DIM = 64
SMALL_NAMES = tuple(f"s{i + 1:02d}" for i in range(len(LADDER_DEPTHS)))
LARGE_NAMES = tuple(f"s{len(SMALL_NAMES) + i + 1:02d}" for i in range(len(LARGE_DEPTHS)))
SIZE_NAMES = SMALL_NAMES + LARGE_NAMES
FINE_RANGE = ("s01", "s08")  # the ladder sizes between which the fine sizes sit
FINE_NAMES = tuple(
    f"{name}{step}" for name in SIZE_NAMES[SIZE_NAMES.index(FINE_RANGE[0]):SIZE_NAMES.index(FINE_RANGE[1])]
    for step in "ab"
)
ALL_SIZE_NAMES = tuple(sorted(SIZE_NAMES + FINE_NAMES))


@dataclass(frozen=True)
class Shape:
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    seq_len: int
    vocab: int = 256

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "seq_len", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def ladder_shape(name: str, seq_len: int = 128, vocab: int = 256) -> Shape:
    """The shape of a named size: a ladder size (s01 ... s12) or a fine size between two of them (s02a ... s07b)."""
    if name not in ALL_SIZE_NAMES:
        raise ValueError(f"unknown model size {name!r}; allowed: {', '.join(SIZE_NAMES)}, "
                         f"and {FINE_NAMES[0]} ... {FINE_NAMES[-1]} ({', '.join(FINE_NAMES)})")
    if name in LARGE_NAMES:
        depth = LARGE_DEPTHS[LARGE_NAMES.index(name)]
        d_model = LARGE_ASPECT_RATIO * depth
        return Shape(depth, d_model, d_model // LARGE_HEAD_DIM, FFN_MULT * d_model, seq_len, vocab)
    base, step = name[:3], name[3:]
    depth = LADDER_DEPTHS[SIZE_NAMES.index(base)]
    d_model = ASPECT_RATIO * depth + (8 if step else 0)
    depth += step == "b"
    return Shape(depth, d_model, ladder_heads(d_model), FFN_MULT * d_model, seq_len, vocab)


def ladder_heads(d_model: int) -> int:
    """MAX_HEADS heads, or as many MIN_HEAD_DIM-wide heads as fit, the largest such count that divides d_model."""
    most = max(1, min(MAX_HEADS, d_model // MIN_HEAD_DIM))
    return next(h for h in range(most, 0, -1) if d_model % h == 0)


# Parameters of scaling.model.Transformer by their place in it: (shape, copies, the axis tensor parallelism
# splits or None). Megatron's split (Shoeybi et al. 2019): the qkv and MLP-up matrices by output columns, the
# attention-output and MLP-down matrices by input rows, so each block needs one reduction forward and one backward.
EMBEDDINGS = ("embed.embedding", "pos.embedding")


def param_table(s: Shape) -> dict[str, tuple[tuple[int, ...], int, int | None]]:
    d, f, L = s.d_model, s.d_ff, s.n_layers
    return {
        "embed.embedding": ((s.vocab, d), 1, None),  # tied with the output projection
        "pos.embedding": ((s.seq_len, d), 1, None),
        "attn.qkv.kernel": ((d, 3 * d), L, 1),  # fused qkv, no biases
        "attn.out.kernel": ((d, d), L, 0),
        "mlp.up.kernel": ((d, f), L, 1),
        "mlp.up.bias": ((f,), L, 0),
        "mlp.down.kernel": ((f, d), L, 0),
        "mlp.down.bias": ((d,), L, None),
        "norm1.scale": ((d,), L, None), "norm1.bias": ((d,), L, None),  # pre-norms
        "norm2.scale": ((d,), L, None), "norm2.bias": ((d,), L, None),
        "norm.scale": ((d,), 1, None), "norm.bias": ((d,), 1, None),  # final norm
    }


def split_axes(shape: tuple[int, ...], tensor_axis: int | None, data: int, tensor: int,
               fsdp: bool) -> list[str | None]:
    """The mesh axis each axis of a parameter (or of its Adam moments) is split over: its tensor axis over "tensor"
    when that divides evenly, and under FSDP its largest other axis that divides evenly over "data"; None: whole.
    scaling.devices lays the state out by this rule and scaling.memory counts bytes by it."""
    axes: list[str | None] = [None] * len(shape)
    if tensor_axis is not None and tensor > 1 and shape[tensor_axis] % tensor == 0:
        axes[tensor_axis] = "tensor"
    if fsdp and data > 1:
        free = [a for a in range(len(shape)) if axes[a] is None and shape[a] % data == 0]
        if free:
            axes[max(free, key=lambda a: shape[a])] = "data"
    return axes


def count_params(s: Shape) -> dict:
    """Exact parameter counts of scaling.model.Transformer, split by convention."""
    sizes = {name: math.prod(shape) * copies for name, (shape, copies, _) in param_table(s).items()}
    embedding = sum(sizes[name] for name in EMBEDDINGS)  # token (tied with the output) + position
    total = sum(sizes.values())
    return {"N": total - embedding, "N_embedding": embedding, "N_total": total}


def flops_per_token(s: Shape) -> dict:
    """Training FLOPs per token (forward + backward) under each convention."""
    n = count_params(s)
    attention = 12 * s.n_layers * s.seq_len * s.d_model
    return {
        "flops": 6 * n["N"],
        "flops_with_attention": 6 * n["N"] + attention,
        "flops_total_params": 6 * n["N_total"],
        "flops_hardware": 6 * n["N"] + attention + 6 * s.vocab * s.d_model,
    }


LR_WIDTH_CONSTANT = 0.64  # lr * d_model at the reference batch (sweeps/lr_scan.yaml, results/reference-lr/)
LR_CAP = 0.02  # the best scanned rate of the narrowest scanned size (s02)
LR_REFERENCE_BATCH_TOKENS = 2048  # the scan's batch: 16 sequences of 128 tokens


def default_learning_rate(d_model: int, tokens_per_step: int = LR_REFERENCE_BATCH_TOKENS) -> float:
    """Default peak AdamW rate: lr = min(0.02, 0.64 / d_model) * sqrt(tokens_per_step / 2048).

    Adam's update size does not shrink with width, so the stable rate falls as 1 / width (the muP rule for hidden
    matrices). The constant is measured: at C = 1e12 FLOPs with 2,048-token batches (sweeps/lr_scan.yaml,
    results/reference-lr/) the best rates were 1.9e-2 for s02 (d_model 32, 3,227 steps) and 1.5e-2 for s03 (48,
    965 steps), with losses within 1% of the best over a factor of 2 either side; s04 (64, 410 steps) was as good
    at 1e-2 as at its best (6.7e-3). Below s02 the scan found no higher optimum (s01b was best at 5e-3), hence the
    cap. The rate scales with the square root of the batch (Malladi et al. 2022, the square-root rule for Adam).
    At GPT-2 small's width (768) and batch (0.5M tokens) the rule gives 1.3e-2; it is a rule for this ladder.
    """
    return min(LR_CAP, LR_WIDTH_CONSTANT / d_model) * math.sqrt(tokens_per_step / LR_REFERENCE_BATCH_TOKENS)


def horizon_factor(steps: int, horizon_steps: int | None, exponent: float) -> float:
    """The default rate's multiplier for a run of `steps` steps: (horizon_steps / steps) ** exponent beyond
    horizon_steps, else 1; None: 1 at every length.

    The width rule was measured on runs of 1e3 to 3e3 steps; in longer runs the best rate falls as a power of the
    horizon (Bjorck et al. 2024, "Scaling optimal LR across token horizons"). Measured here at batch 4 x 128 bytes
    on four widths and 1e3 to 3e4 steps (sweeps/lr_horizon.yaml, results/reference-lr-horizon/): the width rule's
    constant falls as steps^-0.52 (95% interval [0.35, 1.10]) and equals the rule's 0.64 at 4.3e3 steps, hence
    horizon 4,000 and exponent 0.5. Three budgets retrained so (results/reference-horizon/) did not extrapolate
    better, and the 80-wide s05 lost 5% at 2.1e4 steps, so it is off by default (docs/protocol.md)."""
    if horizon_steps is None or steps <= horizon_steps:
        return 1.0
    return (horizon_steps / steps) ** exponent
