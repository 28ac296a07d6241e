"""A decoder-only transformer in Flax NNX: pre-norm blocks, causal self-attention, GELU MLP, learned
positions, output projection tied to the token embedding. Parameter counts: scaling.sizes.count_params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling.sizes import Shape

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Attention(nnx.Module):
    def __init__(self, s: Shape, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        # Residual-branch outputs get a depth-scaled init (GPT-2) so the residual stream does not grow with depth.
        out_init = nnx.initializers.normal(0.02 / (2 * s.n_layers) ** 0.5)
        self.qkv = nnx.Linear(s.d_model, 3 * s.d_model, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(s.d_model, s.d_model, use_bias=False, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.n_heads = s.n_heads

    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.n_heads, d // self.n_heads) for z in (q, k, v))
        return self.out(causal_attention(q, k, v).reshape(b, t, d))


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(width) + causal mask) v for (batch, time, heads, width) inputs, as
    jax.nn.dot_product_attention(q, k, v, is_causal=True) computes it, in fewer passes over the (time x time)
    scores, which set the pace of small models on a CPU (README, Performance): the scale goes on q, the mask is one
    added constant, the row maximum is a constant to the gradient (softmax does not depend on it), and the rows are
    normalised after the product with v, on a tensor `time / width` times smaller than the probabilities. Scores
    and the softmax are float32 whatever the compute dtype."""
    t, width = q.shape[1], q.shape[-1]
    s = jnp.einsum("bqhe,bkhe->bhqk", q * width**-0.5, k, preferred_element_type=jnp.float32)
    s = s + np.where(np.tri(t, dtype=bool), 0.0, -1e30).astype(np.float32)
    p = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
    y = jnp.einsum("bhqk,bkhe->bqhe", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (y / jnp.swapaxes(p.sum(axis=-1), 1, 2)[..., None]).astype(v.dtype)


class MLP(nnx.Module):
    def __init__(self, s: Shape, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        out_init = nnx.initializers.normal(0.02 / (2 * s.n_layers) ** 0.5)
        self.up = nnx.Linear(s.d_model, s.d_ff, kernel_init=init, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(s.d_ff, s.d_model, kernel_init=out_init, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    def __init__(self, s: Shape, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(s.d_model, rngs=rngs)
        self.attn = Attention(s, dtype, rngs)
        self.norm2 = nnx.LayerNorm(s.d_model, rngs=rngs)
        self.mlp = MLP(s, dtype, rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def remat_blocks(blocks, x):
    """The blocks applied in turn with their activations recomputed in the backward pass (jax.checkpoint): each
    block keeps only its input, and one block's activations are rebuilt at a time, for a second forward pass (a
    third more compute); scaling.memory estimates the saving. The blocks' parameters are stacked and scanned
    over, because in a Python loop XLA may schedule every recomputation at once and keep them all (measured on
    XLA:CPU: no saving at all); a scan's backward rebuilds one block per iteration. Same numbers as the loop."""
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(b) for b in blocks))

    def body(x, params):
        return jax.checkpoint(lambda params, x: nnx.merge(graphdef, params)(x))(params, x), None

    return jax.lax.scan(body, x, stacked)[0]


class Transformer(nnx.Module):
    def __init__(self, s: Shape, rngs: nnx.Rngs, dtype: str = "float32", remat: bool = False):
        dt = DTYPES[dtype]
        self.embed = nnx.Embed(s.vocab, s.d_model, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.pos = nnx.Embed(s.seq_len, s.d_model, embedding_init=nnx.initializers.normal(0.01), rngs=rngs)
        self.blocks = nnx.List([Block(s, dt, rngs) for _ in range(s.n_layers)])
        self.norm = nnx.LayerNorm(s.d_model, rngs=rngs)
        self.dtype, self.remat = dt, remat

    def __call__(self, tokens):
        """tokens: int (batch, time) -> logits float32 (batch, time, vocab)."""
        x = self.embed(tokens) + self.pos.embedding[None, : tokens.shape[1]]
        if self.remat:
            x = remat_blocks(self.blocks, x)
        else:
            for block in self.blocks:
                x = block(x)
        x = self.norm(x)
        # Tied output projection; logits in float32 for a stable softmax.
        return (x.astype(self.dtype) @ self.embed.embedding.T.astype(self.dtype)).astype(jnp.float32)


def loss_fn(model: Transformer, batch):
    """Mean next-token cross-entropy in nats. batch: int (batch, seq_len + 1)."""
    logits = model(batch[:, :-1])
    return cross_entropy(logits, batch[:, 1:]).mean()


def cross_entropy(logits, targets):
    """-log softmax(logits)[target], as logsumexp minus the target's logit picked by a one-hot product: the
    gradient of a gather (take_along_axis) is a scatter, which XLA runs as a slow serial loop on a CPU, while the
    one-hot product's is elementwise and fuses (1.08x the tokens/s at s03, 1.4x at s01; README, Performance)."""
    one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(logits * one_hot, axis=-1)


def count_tree_params(model: nnx.Module) -> int:
    """Parameters as they sit in the tree (to check the analytic count)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
