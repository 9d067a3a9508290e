"""The main job through its command lines: train -> export -> linear_eval."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  """Runs `python -m ...` from the repo root; returns stdout + stderr."""
  env = dict(os.environ)
  # One CPU device: the CLI must work without the tests' two-device flag.
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  if proc.returncode:
    raise AssertionError(f'{args} failed ({proc.returncode}):\n'
                         f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc.stdout + proc.stderr


class EndToEndTest(absltest.TestCase):

  def test_smoke_train_export_eval(self):
    with tempfile.TemporaryDirectory() as tmp:
      workdir, feats = os.path.join(tmp, 'run'), os.path.join(tmp, 'feats')
      log = run('wgan_jax.main', '--config=configs/smoke.py',
                f'--workdir={workdir}', '--config.num_steps=6',
                '--config.log_every_steps=3',
                '--config.checkpoint_every_steps=3')
      self.assertIn('step 6 |', log)
      # One line of ours per checkpoint instead of orbax's INFO lines.
      self.assertIn('Checkpointing step 3', log)
      self.assertNotIn('checkpoint_manager.py', log)
      self.assertTrue(os.path.exists(os.path.join(workdir, 'losses.png')))
      run('wgan_jax.export', f'--workdir={workdir}', f'--out={feats}',
          '--splits=train[:1000],test[:500]', '--batch_size=128')
      with open(os.path.join(feats, 'layout.json')) as f:
        layout = json.load(f)
      self.assertEqual(layout['step'], 6)
      self.assertEqual(layout['total_dim'], 16 * (8 + 8 + 16 + 16 + 32 + 32))
      x = np.load(os.path.join(feats, 'train_features.npy'))
      self.assertEqual(x.shape, (1000, layout['total_dim']))
      self.assertEqual(x.dtype, np.float32)
      out = run('wgan_jax.linear_eval', f'--features={feats}')
      self.assertIn('test accuracy', out)
      with open(os.path.join(feats, 'results.json')) as f:
        results = json.load(f)
      self.assertEqual(results['n_test'], 500)
      # Chance is 10%; even barely trained conv features do far better.
      self.assertGreater(results['test_accuracy'], 0.2)

  def test_clear_errors(self):
    with tempfile.TemporaryDirectory() as tmp:
      with self.assertRaisesRegex(AssertionError, 'No config.json'):
        run('wgan_jax.export', f'--workdir={tmp}', f'--out={tmp}/f')
      with self.assertRaisesRegex(AssertionError, 'reads no critic'):
        run('wgan_jax.export', '--source=pixels', f'--workdir={tmp}',
            f'--out={tmp}/f')
      with self.assertRaisesRegex(AssertionError, 'nonexistent_key'):
        run('wgan_jax.main', '--config=configs/smoke.py', f'--workdir={tmp}',
            '--config.nonexistent_key=1')


if __name__ == '__main__':
  absltest.main()
