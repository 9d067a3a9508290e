"""Tests for the train step, the loop, resume and the config checks."""

import json
import logging as std_logging
import os
import tempfile

from absl import logging as absl_logging
from absl.testing import absltest
import jax
import numpy as np

from configs import smoke
from wgan_jax import checkpoints
from wgan_jax import models
from wgan_jax import train
from wgan_jax import writers


def tiny_config(**overrides):
  config = smoke.get_config()
  config.model.z_dim = 8
  config.model.gen_widths = (8, 8, 4)
  config.model.critic_widths = (4, 4, 8)
  config.model.critic_strides = (2, 2, 2)
  config.batch_size = 4
  config.n_critic = 2
  config.num_steps = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.num_samples = 4
  config.shuffle_buffer = 100
  for key, value in overrides.items():
    config[key] = value
  return config


def run_steps(config, devices, steps=2):
  """Runs `steps` train steps on a mesh of `devices`; returns metrics, state."""
  mesh = train.create_mesh(devices)
  gen, critic = models.create_models(config.model)
  state = train.init_state(config, gen, critic, jax.random.PRNGKey(0))
  step = train.jit_train_step(train.make_train_step(config, gen, critic), mesh)
  rng = np.random.default_rng(0)
  history = []
  for _ in range(steps):
    real = rng.uniform(-1, 1, (config.n_critic, config.batch_size, 32, 32, 3))
    state, metrics = step(state, real.astype(np.float32))
    history.append(jax.device_get(metrics))
  return history, state


class TrainStepTest(absltest.TestCase):

  def test_same_losses_on_one_and_two_devices(self):
    devices = jax.devices()
    self.assertGreaterEqual(len(devices), 2, 'conftest asks for 2 devices')
    for norm in ('layer', 'batch'):
      config = tiny_config()
      config.model.critic_norm = norm
      one, state1 = run_steps(config, devices[:1])
      two, state2 = run_steps(config, devices[:2])
      for m1, m2 in zip(one, two):
        for key in train.METRICS:
          np.testing.assert_allclose(m1[key], m2[key], rtol=2e-4, atol=1e-5,
                                     err_msg=f'{norm} {key}')
      # Parameters are not compared elementwise: a conv bias in front of a
      # norm has a mathematically zero gradient, and Adam scales the float
      # noise there up to +-learning_rate, differently for each reduction
      # order. The output layer sees no such cancellation.
      np.testing.assert_allclose(state1.critic.params['out']['kernel'],
                                 state2.critic.params['out']['kernel'],
                                 rtol=1e-4, atol=1e-6)

  def test_metrics_are_finite_and_step_counts(self):
    config = tiny_config()
    history, state = run_steps(config, jax.devices()[:1], steps=2)
    self.assertEqual(int(state.step), 2)
    for key in train.METRICS:
      self.assertTrue(np.isfinite(history[-1][key]), key)
    self.assertGreater(history[-1]['gradient_penalty'], 0.0)

  def test_gan_loss_runs(self):
    config = tiny_config(loss='gan')
    history, _ = run_steps(config, jax.devices()[:1], steps=1)
    self.assertEqual(float(history[0]['gradient_penalty']), 0.0)
    self.assertTrue(np.isfinite(history[0]['critic_loss']))


class TrainLoopTest(absltest.TestCase):

  def test_resume_equals_straight_run(self):
    with tempfile.TemporaryDirectory() as tmp:
      straight = train.train_and_evaluate(tiny_config(num_steps=4),
                                          os.path.join(tmp, 'straight'))
      resumed_dir = os.path.join(tmp, 'resumed')
      half = train.train_and_evaluate(tiny_config(num_steps=2), resumed_dir)
      self.assertEqual(int(half.step), 2)
      # As if that run had logged step 3 and crashed before its checkpoint.
      with open(os.path.join(resumed_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps({'step': 3, 'gen_loss': 0.0}) + '\n')
      resumed = train.train_and_evaluate(tiny_config(num_steps=4), resumed_dir)
      self.assertEqual(int(resumed.step), 4)
      for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
      # What a researcher looks at.
      for name in ('config.json', 'metrics.jsonl', 'losses.png',
                   'samples/step_0000004.png'):
        self.assertTrue(os.path.exists(os.path.join(resumed_dir, name)), name)
      self.assertTrue(os.listdir(os.path.join(resumed_dir, 'tensorboard')))
      steps = [[r['step'] for r in writers.read_metrics(
          os.path.join(tmp, run, 'metrics.jsonl'))]
               for run in ('straight', 'resumed')]
      self.assertEqual(steps[0], steps[1])

  def test_other_architecture_in_workdir_is_refused(self):
    with tempfile.TemporaryDirectory() as tmp:
      train.train_and_evaluate(tiny_config(num_steps=1,
                                           checkpoint_every_steps=1), tmp)
      config = tiny_config(num_steps=2)
      config.model.critic_widths = (4, 4, 16)
      with self.assertRaisesRegex(ValueError, 'another architecture'):
        train.train_and_evaluate(config, tmp)
      # Nothing already written is touched.
      with open(os.path.join(tmp, 'config.json')) as f:
        self.assertEqual(json.load(f)['model']['critic_widths'], [4, 4, 8])

  def test_resume_with_other_settings_is_refused(self):
    with tempfile.TemporaryDirectory() as tmp:
      train.train_and_evaluate(tiny_config(num_steps=1,
                                           checkpoint_every_steps=1), tmp)
      config = tiny_config(num_steps=2)
      config.optimizer.learning_rate = 0.1
      with self.assertRaisesRegex(ValueError, 'other settings'):
        train.train_and_evaluate(config, tmp)

  def test_failed_first_start_blocks_nothing(self):
    with tempfile.TemporaryDirectory() as tmp:
      workdir, empty = os.path.join(tmp, 'run'), os.path.join(tmp, 'empty')
      os.makedirs(empty)
      with self.assertRaisesRegex(FileNotFoundError, 'TFDS_DATA_DIR'):
        train.train_and_evaluate(tiny_config(data_dir=empty), workdir)
      self.assertFalse(os.path.exists(os.path.join(workdir, 'config.json')))
      config = tiny_config(num_steps=1)
      config.model.critic_widths = (4, 4, 16)
      train.train_and_evaluate(config, workdir)  # Nothing to conflict with.

  def test_non_finite_loss_stops_with_step_range(self):
    with tempfile.TemporaryDirectory() as tmp:
      config = tiny_config(num_steps=2, gp_weight=float('nan'))
      with self.assertRaisesRegex(FloatingPointError, 'between steps 1 and 1'):
        train.train_and_evaluate(config, tmp)

  def test_orbax_info_is_hidden_and_its_warnings_are_not(self):
    checkpoints.quiet_orbax_info()
    checkpoints.quiet_orbax_info()  # Twice adds one filter.
    handler = absl_logging.get_absl_handler()
    self.assertLen([f for f in handler.filters
                    if isinstance(f, checkpoints._DropOrbaxInfo)], 1)

    def shown(level, path):
      return bool(handler.filter(std_logging.LogRecord(
          'absl', level, path, 1, 'message', None, None)))

    orbax = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint',
                         'checkpoint_manager.py')
    self.assertFalse(shown(std_logging.INFO, orbax))
    self.assertTrue(shown(std_logging.WARNING, orbax))
    self.assertTrue(shown(std_logging.INFO, train.__file__))

  def test_keep_zero_checkpoints_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'keep_checkpoints'):
      train.validate_config(tiny_config(keep_checkpoints=0), 2)

  def test_batch_not_divisible_by_devices(self):
    config = tiny_config(batch_size=3)
    with self.assertRaisesRegex(ValueError, 'not divisible by the 2 devices'):
      train.validate_config(config, 2)


if __name__ == '__main__':
  absltest.main()
