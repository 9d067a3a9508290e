"""Tests for config.model.dtype: bfloat16 compute with float32 parameters."""

import json
import os
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from configs import smoke
from wgan_jax import checkpoints
from wgan_jax import losses
from wgan_jax import models
from wgan_jax import train


def tiny_config(dtype='float32', conv_impl='auto'):
  """A few-channel config that compiles in seconds."""
  config = smoke.get_config()
  config.model.z_dim = 8
  config.model.gen_widths = (8, 8, 4)
  config.model.critic_widths = (4, 4, 8)
  config.model.critic_strides = (2, 2, 2)
  config.model.conv_impl = conv_impl
  config.model.dtype = dtype
  config.batch_size = 4
  config.n_critic = 1
  return config


def float_dtypes(tree):
  """The set of dtypes of the floating-point leaves of a pytree."""
  return {x.dtype for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


class PenaltyTest(absltest.TestCase):

  def test_bfloat16_penalty_is_finite_and_close_to_float32(self):
    rng = np.random.default_rng(0)
    real = jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    fake = jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    key = jax.random.PRNGKey(1)
    for impl in ('matmul', 'xla'):
      _, critic32 = models.create_models(tiny_config('float32', impl).model)
      _, critic16 = models.create_models(tiny_config('bfloat16', impl).model)
      params = critic32.init(jax.random.PRNGKey(0), real)['params']
      # The bf16 critic really computes in bf16 (else this test proves
      # nothing), on the same float32 parameters, and scores in float32.
      scores, inter = critic16.apply(
          {'params': params}, real, capture_intermediates=True,
          mutable=['intermediates'])
      self.assertEqual(inter['intermediates']['conv0']['__call__'][0].dtype,
                       jnp.bfloat16, impl)
      self.assertEqual(scores.dtype, jnp.float32, impl)
      self.assertEqual(float_dtypes(params), {jnp.dtype(jnp.float32)})

      results = {}
      for name, critic in (('fp32', critic32), ('bf16', critic16)):
        score_fn = lambda x, c=critic: c.apply({'params': params}, x)
        penalty, norms = jax.jit(losses.gradient_penalty, static_argnums=0)(
            score_fn, real, fake, key)
        self.assertEqual(penalty.dtype, jnp.float32, f'{impl} {name}')
        self.assertEqual(norms.dtype, jnp.float32, f'{impl} {name}')
        results[name] = (float(penalty), np.asarray(norms))
      (p32, n32), (p16, n16) = results['fp32'], results['bf16']
      self.assertTrue(np.isfinite(p16) and np.all(np.isfinite(n16)), impl)
      self.assertGreater(p32, 0.0)
      np.testing.assert_allclose(p16, p32, rtol=5e-2, err_msg=impl)
      np.testing.assert_allclose(n16, n32, rtol=5e-2, err_msg=impl)


class TrainStepTest(absltest.TestCase):

  def test_bfloat16_step_keeps_float32_state_and_finite_metrics(self):
    config = tiny_config('bfloat16')
    gen, critic = models.create_models(config.model)
    state = train.init_state(config, gen, critic, jax.random.PRNGKey(0))
    before = jax.device_get(state.critic.params)
    step = train.jit_train_step(train.make_train_step(config, gen, critic),
                                train.create_mesh(jax.devices()[:1]))
    real = np.random.default_rng(0).uniform(
        -1, 1, (config.n_critic, config.batch_size, 32, 32, 3))
    state, metrics = step(state, real.astype(np.float32))
    float32 = {jnp.dtype(jnp.float32)}
    for name, net in (('gen', state.gen), ('critic', state.critic)):
      self.assertEqual(float_dtypes(net.params), float32, name)
      self.assertEqual(float_dtypes(net.opt_state), float32, name)
    self.assertEqual(float_dtypes(state.gen.batch_stats), float32)
    for key in train.METRICS:
      self.assertEqual(metrics[key].dtype, jnp.float32, key)
      self.assertTrue(np.isfinite(metrics[key]), key)
    self.assertGreater(float(metrics['gradient_penalty']), 0.0)
    # The step did update the parameters.
    after = jax.device_get(state.critic.params)
    self.assertFalse(np.allclose(before['out']['kernel'],
                                 after['out']['kernel']))


class ConfigTest(absltest.TestCase):

  def test_unknown_dtype_is_refused(self):
    config = tiny_config('float16')
    pattern = r"config\.model\.dtype='float16'.*\('float32', 'bfloat16'\)"
    with self.assertRaisesRegex(ValueError, pattern):
      train.validate_config(config, 1)
    with self.assertRaisesRegex(ValueError, pattern):
      models.create_models(config.model)

  def test_resume_may_not_change_dtype(self):
    with tempfile.TemporaryDirectory() as tmp:
      saved = tiny_config('float32')
      checkpoints.save_config(tmp, saved)
      checkpoints.check_resumable(tmp, tiny_config('float32'))
      with self.assertRaisesRegex(ValueError, 'another architecture.*dtype'):
        checkpoints.check_resumable(tmp, tiny_config('bfloat16'))
      # A workdir saved before the key existed ran in float32.
      old = saved.to_dict()
      del old['model']['dtype']
      with open(os.path.join(tmp, checkpoints.CONFIG_FILE), 'w') as f:
        json.dump(old, f)
      checkpoints.check_resumable(tmp, tiny_config('float32'))
      with self.assertRaisesRegex(ValueError, 'another architecture.*dtype'):
        checkpoints.check_resumable(tmp, tiny_config('bfloat16'))


if __name__ == '__main__':
  absltest.main()
