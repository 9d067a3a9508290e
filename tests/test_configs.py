"""configs/from_workdir.py reads back exactly what training saved."""

import tempfile

from absl.testing import absltest
from absl.testing import parameterized

from configs import default
from configs import from_workdir
from configs import narrow
from configs import smoke
from configs import toy
from wgan_jax import checkpoints


class FromWorkdirTest(parameterized.TestCase):

  @parameterized.parameters(default, narrow, smoke, toy)
  def test_round_trip(self, module):
    config = module.get_config()
    with tempfile.TemporaryDirectory() as workdir:
      checkpoints.save_config(workdir, config)
      loaded = from_workdir.get_config(workdir)
      self.assertEqual(loaded.to_dict(), config.to_dict())
      checkpoints.check_resumable(workdir, loaded)  # Nothing differs.
      loaded.optimizer.learning_rate *= 2
      with self.assertRaisesRegex(ValueError, 'from_workdir.py:'):
        checkpoints.check_resumable(workdir, loaded)

  def test_not_a_workdir(self):
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaisesRegex(FileNotFoundError, 'not a training'):
        from_workdir.get_config(workdir)
    with self.assertRaisesRegex(ValueError, 'after a colon'):
      from_workdir.get_config()


if __name__ == '__main__':
  absltest.main()
