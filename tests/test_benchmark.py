"""The benchmark command's results on a tiny architecture."""

from absl.testing import absltest
import numpy as np

from configs import smoke
from wgan_jax import benchmark


class BenchmarkTest(absltest.TestCase):

  def test_results_are_consistent(self):
    config = smoke.get_config()
    # Tiny, so compiling dominates; XLA's convolutions compile fastest.
    config.model.update(z_dim=8, gen_widths=(8, 8, 4), critic_widths=(4, 4, 8),
                        critic_strides=(2, 2, 2), conv_impl='xla')
    config.update(batch_size=4, n_critic=2, shuffle_buffer=100)
    result = benchmark.run(config, rounds=2, repeats=1, input_batches=2)
    steps = result['steps']
    self.assertEqual(set(steps), {'critic_step', 'generator_step',
                                  'iteration'})
    b, n = config.batch_size, config.n_critic
    for name, images in (('critic_step', b), ('iteration', n * b)):
      s = steps[name]
      self.assertLessEqual(s['min_s'], s['median_s'])
      self.assertLessEqual(s['median_s'], s['max_s'])
      np.testing.assert_allclose(s['images_per_sec'], images / s['median_s'])
    self.assertGreater(result['matmul_gflops'], 0)
    critic = steps['critic_step']
    np.testing.assert_allclose(
        critic['fraction_of_matmul'],
        critic['achieved_gflops'] / result['matmul_gflops'])
    self.assertGreater(result['input_images_per_sec'], 0)
    self.assertIn('critic step at', benchmark.format_table(result))


if __name__ == '__main__':
  absltest.main()
