"""Tests for the generator, the critic and the feature layout."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from wgan_jax import models


class ModelsTest(absltest.TestCase):

  def test_default_critic_features_have_28672_dims(self):
    critic = models.Critic()
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(critic.init, jax.random.PRNGKey(0), x)

    def features(variables, x):
      _, maps = critic.apply(variables, x, return_features=True)
      return models.pool_features(maps)

    shape = jax.eval_shape(features, variables, x).shape
    self.assertEqual(shape, (2, 28_672))
    layout = models.feature_layout(critic.widths, critic.strides)
    self.assertEqual(layout['total_dim'], 28_672)
    self.assertEqual([l['map_size'] for l in layout['layers']],
                     [32, 16, 16, 8, 8, 4])

  def test_layer_norm_normalises_each_example_over_hwc(self):
    critic = models.Critic(widths=(4, 8), strides=(1, 2), norm='layer')
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 32, 3)) * 5 + 2
    variables = critic.init(jax.random.PRNGKey(1), x)
    _, inter = critic.apply(variables, x, capture_intermediates=True)
    out = np.asarray(inter['intermediates']['norm1']['__call__'][0])
    self.assertEqual(out.shape, (3, 16, 16, 8))
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.var(axis=(1, 2, 3)), 1.0, atol=1e-3)
    # Not Flax's default per-pixel LayerNorm: single pixels are not centred.
    self.assertGreater(np.abs(out.mean(axis=-1)).max(), 0.1)
    # One scale and offset per channel.
    params = variables['params']['norm1']
    self.assertEqual(params['scale'].shape, (8,))
    self.assertEqual(params['bias'].shape, (8,))

  def test_first_layer_has_no_norm(self):
    for norm in ('layer', 'batch'):
      critic = models.Critic(widths=(4, 4, 4), strides=(1, 2, 2), norm=norm)
      variables = critic.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
      norms = [k for k in variables['params'] if k.startswith('norm')]
      self.assertLen(norms, 2)

  def test_shapes(self):
    gen = models.Generator(widths=(16, 8, 4))
    z = jax.random.normal(jax.random.PRNGKey(0), (5, 10))
    variables = gen.init(jax.random.PRNGKey(1), z)
    images, _ = gen.apply(variables, z, mutable=['batch_stats'])
    self.assertEqual(images.shape, (5, 32, 32, 3))
    self.assertLessEqual(float(jnp.abs(images).max()), 1.0)
    critic = models.Critic(widths=(4, 8), strides=(1, 2), norm='none')
    cvars = critic.init(jax.random.PRNGKey(2), images)
    self.assertEqual(critic.apply(cvars, images).shape, (5,))

  def test_pool_features_known_answer(self):
    m = jnp.arange(8 * 8, dtype=jnp.float32).reshape(1, 8, 8, 1)
    out = models.pool_features([m], grid=4)
    # 2x2 windows: the bottom-right element of each is the largest.
    expected = np.arange(64).reshape(8, 8)[1::2, 1::2].reshape(1, -1)
    np.testing.assert_array_equal(out, expected)


if __name__ == '__main__':
  absltest.main()
