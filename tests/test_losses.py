"""Tests for the gradient penalty and the GAN losses."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from wgan_jax import losses

SHAPE = (6, 4, 4, 3)


def _images(seed):
  return jax.random.uniform(jax.random.PRNGKey(seed), SHAPE, minval=-1.0,
                            maxval=1.0)


class GradientPenaltyTest(absltest.TestCase):

  def test_zero_input_gradient_gives_lambda_and_finite_grads(self):
    real, fake = _images(0), _images(1)

    def critic_loss(w):
      # jnp.maximum(x, 10) is constant on [-1, 1]: the input gradient is
      # exactly zero, where a bare sqrt in the norm gives NaN gradients.
      score_fn = lambda x: w * jnp.sum(jnp.maximum(x, 10.0), axis=(1, 2, 3))
      penalty, _ = losses.gradient_penalty(score_fn, real, fake,
                                           jax.random.PRNGKey(2))
      return 10.0 * penalty

    value, grad = jax.value_and_grad(critic_loss)(0.5)
    self.assertEqual(float(value), 10.0)
    self.assertTrue(np.isfinite(grad))

  def test_linear_critic_slope_is_norm_of_w(self):
    w = jax.random.normal(jax.random.PRNGKey(3), SHAPE[1:])
    score_fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
    penalty, norms = losses.gradient_penalty(score_fn, _images(0), _images(1),
                                             jax.random.PRNGKey(4))
    expected = float(jnp.linalg.norm(w))
    np.testing.assert_allclose(norms, np.full(SHAPE[0], expected), rtol=1e-5)
    np.testing.assert_allclose(penalty, (expected - 1.0) ** 2, rtol=1e-5)

  def test_one_eps_per_example(self):
    real, fake = jnp.ones(SHAPE), jnp.zeros(SHAPE)
    key = jax.random.PRNGKey(5)
    # Input gradients x_hat and x_hat^2, with x_hat = eps. By Cauchy-Schwarz
    # sqrt(D) * ||eps^2|| == ||eps||^2 holds exactly when eps is the same over
    # all D pixels of an example.
    _, n1 = losses.gradient_penalty(
        lambda x: jnp.sum(x ** 2 / 2, axis=(1, 2, 3)), real, fake, key)
    _, n2 = losses.gradient_penalty(
        lambda x: jnp.sum(x ** 3 / 3, axis=(1, 2, 3)), real, fake, key)
    d = np.prod(SHAPE[1:])
    np.testing.assert_allclose(np.sqrt(d) * n2, n1 ** 2, rtol=1e-5)
    # ... and eps differs between examples.
    self.assertGreater(len(np.unique(np.round(np.asarray(n1), 6))), 1)


class LossesTest(absltest.TestCase):

  def test_wgan_losses(self):
    real, fake = jnp.array([1.0, 3.0]), jnp.array([0.0, -2.0])
    self.assertAlmostEqual(float(losses.wgan_critic_loss(real, fake)), -3.0)
    self.assertAlmostEqual(float(losses.wgan_generator_loss(fake)), 1.0)

  def test_gan_losses_match_cross_entropy(self):
    real, fake = jnp.array([0.3, -1.2]), jnp.array([2.0, -0.5])
    d_real, d_fake = jax.nn.sigmoid(real), jax.nn.sigmoid(fake)
    expected_d = -np.mean(np.log(d_real)) - np.mean(np.log(1 - d_fake))
    expected_g = -np.mean(np.log(d_fake))
    np.testing.assert_allclose(losses.gan_critic_loss(real, fake), expected_d,
                               rtol=1e-5)
    np.testing.assert_allclose(losses.gan_generator_loss(fake), expected_g,
                               rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
