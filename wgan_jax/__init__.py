"""wgan_jax: WGAN-GP representation learning in JAX/Flax."""

__version__ = '0.1.0'
