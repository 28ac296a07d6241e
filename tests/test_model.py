import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import sizes
from scaling.model import Transformer


def test_future_tokens_never_change_past_logits():
    shape = sizes.Shape(n_layers=2, d_model=32, n_heads=2, d_ff=64, seq_len=16)
    model = Transformer(shape, nnx.Rngs(1))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16))
    b = a.copy()
    b[:, 9:] = rng.integers(0, 256, (2, 7))  # change only positions 9..15
    la, lb = model(jnp.asarray(a)), model(jnp.asarray(b))
    np.testing.assert_array_equal(np.asarray(la[:, :9]), np.asarray(lb[:, :9]))
    assert not np.allclose(np.asarray(la[:, 9:]), np.asarray(lb[:, 9:]))


def test_initial_loss_is_near_uniform():
    from scaling.model import loss_fn

    shape = sizes.ladder_shape("s02", seq_len=32)
    model = Transformer(shape, nnx.Rngs(0))
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 33)))
    assert abs(float(loss_fn(model, batch)) - np.log(256)) < 0.1


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_causal_attention_matches_jax_reference_in_value_and_gradient(dtype, tol):
    from scaling.model import causal_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 16, 3, 8)).astype(dtype) for i in range(3))
    w = jax.random.normal(jax.random.key(3), (2, 16, 3, 8))

    def loss(attn):
        return lambda q, k, v: (attn(q, k, v).astype(jnp.float32) * w).sum()

    ours = jax.value_and_grad(loss(causal_attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.value_and_grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)),
                             argnums=(0, 1, 2))(q, k, v)
    assert causal_attention(q, k, v).dtype == dtype
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_cross_entropy_matches_optax_in_value_and_gradient():
    import optax

    from scaling.model import cross_entropy

    # Large logits (scale 30) check the logsumexp is stabilised; every class is a target somewhere.
    logits = 30 * jax.random.normal(jax.random.key(0), (4, 64, 256))
    targets = jax.random.randint(jax.random.key(1), (4, 64), 0, 256)
    w = jax.random.uniform(jax.random.key(2), (4, 64))

    def loss(ce):
        return lambda logits: (ce(logits, targets) * w).sum()

    ours = jax.value_and_grad(loss(cross_entropy))(logits)
    ref = jax.value_and_grad(loss(optax.softmax_cross_entropy_with_integer_labels))(logits)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-6)
    assert cross_entropy(logits, targets).shape == (4, 64)
