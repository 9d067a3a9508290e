"""GAN objectives: WGAN-GP, weight-clipped WGAN and the cross-entropy GAN."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

# 'wgan-clip': the original WGAN (Arjovsky et al. 2017), its critic's
# parameters clipped to [-config.clip_value, clip_value] after each update.
LOSSES = ('wgan-gp', 'gan', 'wgan-clip')
# Objectives whose critic and generator losses are the Wasserstein ones.
WASSERSTEIN_LOSSES = ('wgan-gp', 'wgan-clip')


def gradient_penalty(score_fn: Callable[[jnp.ndarray], jnp.ndarray],
                     real: jnp.ndarray, fake: jnp.ndarray,
                     key: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Two-sided gradient penalty of WGAN-GP on random interpolates.

  x_hat = eps * x + (1 - eps) * G(z), with one eps ~ U[0, 1] per example, and
  the penalty is E[(||grad C(x_hat)||_2 - 1)^2] with the norm over all
  non-batch axes of each example (H, W and C of images; the coordinates of
  [B, D] vectors). The interpolates, the summed scores, the input
  gradient, its norm and the penalty are float32 whatever the critic's
  compute dtype (a bfloat16 critic casts its input itself), so a mixed
  precision critic's penalty stays finite and close to the float32 one.

  Args:
    score_fn: maps examples [B, ...] to scores [B]. The gradient of the sum
      of scores is each example's own input gradient only if the critic treats
      examples independently (layer norm or none; not batch norm).
    real: real examples [B, ...], e.g. images [B, H, W, C].
    fake: generated images, same shape.
    key: PRNG key for eps.

  Returns:
    (penalty, per-example gradient norms [B]).
  """
  dtype = jnp.promote_types(jnp.result_type(real, fake), jnp.float32)
  real, fake = real.astype(dtype), fake.astype(dtype)
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1),
                           dtype=dtype)
  x_hat = eps * real + (1.0 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(score_fn(x).astype(dtype)))(x_hat)
  # safe_norm's gradient is zero, not NaN, where the input gradient is exactly
  # zero; a bare sqrt gives NaN there (a known failure of several ports).
  grads = grads.reshape(grads.shape[0], -1).astype(dtype)
  norms = optax.safe_norm(grads, 0.0, axis=-1)
  return jnp.mean((norms - 1.0) ** 2), norms


def wgan_critic_loss(real_scores, fake_scores):
  """E[C(G(z))] - E[C(x)]: the negated Wasserstein estimate (no penalty)."""
  return jnp.mean(fake_scores) - jnp.mean(real_scores)


def wgan_generator_loss(fake_scores):
  """-E[C(G(z))]."""
  return -jnp.mean(fake_scores)


def gan_critic_loss(real_scores, fake_scores):
  """Cross-entropy discriminator loss, the paper's equation 3.

  -E[log D(x)] - E[log(1 - D(G(z)))] with D = sigmoid(score), written with
  softplus for numerical stability.
  """
  return (jnp.mean(jax.nn.softplus(-real_scores))
          + jnp.mean(jax.nn.softplus(fake_scores)))


def gan_generator_loss(fake_scores):
  """Non-saturating generator loss -E[log D(G(z))], the paper's equation 4."""
  return jnp.mean(jax.nn.softplus(-fake_scores))


def clip_weights(params, clip_value: float):
  """Clips every parameter to [-clip_value, clip_value], the WGAN's constraint.

  All of the critic's parameters are clipped, biases and norm scales
  included, as in the WGAN authors' code.

  Args:
    params: a pytree of arrays.
    clip_value: the bound c > 0.

  Returns:
    The clipped pytree.
  """
  return jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params)
