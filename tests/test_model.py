import jax.numpy as jnp
import numpy as np
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
