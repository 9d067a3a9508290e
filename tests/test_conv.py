"""The matmul convolutions equal flax's, in value and in derivatives."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wgan_jax import conv
from wgan_jax import models


def _derivatives(module, variables, x):
  """Output, input gradient, and the parameter gradient of a penalty-like
  function of the input gradient (the WGAN-GP double backward)."""
  f = lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))
  grad_x = jax.grad(f, argnums=1)(variables, x)

  def penalty(v):
    g = jax.grad(f, argnums=1)(v, x)
    return jnp.sum((jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2, 3))) - 1) ** 2)

  return module.apply(variables, x), grad_x, jax.grad(penalty)(variables)


class ConvTest(parameterized.TestCase):

  def _compare(self, ours, theirs, x):
    variables = theirs.init(jax.random.PRNGKey(0), x)
    # Random bias too, so that a misplaced bias would show.
    variables = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
        variables)
    expected = _derivatives(theirs, variables, x)
    got = _derivatives(ours, variables, x)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
      self.assertEqual(e.shape, g.shape)
      np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)

  @parameterized.parameters((3, 1), (3, 2), (4, 2), (5, 2))
  def test_conv(self, k, s):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
    p = models.conv_padding(k, s)
    self._compare(conv.MatmulConv(5, k, s, p),
                  nn.Conv(5, (k, k), strides=(s, s), padding=((p, p),) * 2), x)

  @parameterized.parameters((4, 2), (3, 2), (5, 2))
  def test_conv_transpose(self, k, s):
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 6))
    self._compare(conv.MatmulConvTranspose(3, k, s),
                  nn.ConvTranspose(3, (k, k), strides=(s, s), padding='SAME'),
                  x)

  def test_models_share_parameters_across_impls(self):
    x = jax.random.uniform(jax.random.PRNGKey(4), (2, 32, 32, 3), minval=-1)
    slow = models.Critic(widths=(4, 8, 8), strides=(1, 2, 2), conv_impl='xla')
    fast = slow.clone(conv_impl='matmul')
    variables = slow.init(jax.random.PRNGKey(5), x)
    np.testing.assert_allclose(fast.apply(variables, x),
                               slow.apply(variables, x), rtol=1e-4, atol=1e-5)
    z = jax.random.normal(jax.random.PRNGKey(6), (2, 8))
    gen = models.Generator(widths=(8, 4, 4), conv_impl='xla')
    gvars = gen.init(jax.random.PRNGKey(7), z)
    out = lambda g: g.apply(gvars, z, mutable=['batch_stats'])[0]
    np.testing.assert_allclose(out(gen.clone(conv_impl='matmul')), out(gen),
                               rtol=1e-4, atol=1e-5)

  def test_auto_impl(self):
    expected = 'matmul' if jax.default_backend() == 'cpu' else 'xla'
    self.assertEqual(conv.resolve_impl('auto'), expected)
    with self.assertRaisesRegex(ValueError, 'Unknown conv'):
      conv.resolve_impl('cudnn')


if __name__ == '__main__':
  absltest.main()
