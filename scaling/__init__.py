"""scaling: sweeps of small JAX transformers and the scaling laws they trace."""

__version__ = "0.1.0"
