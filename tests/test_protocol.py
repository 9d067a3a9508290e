"""Tests for the DCGAN evaluation protocol."""

import tempfile

from absl.testing import absltest
import numpy as np

from wgan_jax import protocol

# select_c's validation (features, labels), unused by the stand-in scorers.
_NO_VAL = (None, None)


def _data(n=800, d=30, k=4, seed=0):
  centers = np.random.default_rng(0).normal(size=(k, d))
  rng = np.random.default_rng(seed + 1)
  y = np.repeat(np.arange(k), n // k)
  x = centers[y] * 0.6 + rng.normal(size=(len(y), d))
  return x.astype(np.float32), y


class ProtocolTest(absltest.TestCase):

  def test_subset_sampler(self):
    y = np.repeat(np.arange(10), 500)
    a = protocol.class_balanced_subset(y, 400, seed=1)
    self.assertEqual(np.bincount(y[a]).tolist(), [400] * 10)
    np.testing.assert_array_equal(a, protocol.class_balanced_subset(y, 400, 1))
    self.assertFalse(np.array_equal(a, protocol.class_balanced_subset(y, 400,
                                                                     2)))

  def test_grid_widens_past_an_edge(self):
    # A stand-in scorer peaked at C = 1: a grid of 1e-3 and 1e-2 must grow
    # upwards to it, one step at a time, and no further.
    fits = []

    def fake_fit(x, y, rows, C, solver, init=None,  # pylint: disable=C0103
                 basis=None, spectrum=None):
      del x, y, rows, solver, init, basis, spectrum
      fits.append(C)
      return {'C': C, 'theta': None}, 0.0

    self.enter_context(absltest.mock.patch.object(protocol, '_fit', fake_fit))
    self.enter_context(absltest.mock.patch.object(
        protocol, '_accuracy', lambda fit, *a: -abs(np.log10(fit['C']))))
    best, scores, _, _ = protocol.select_c(None, None, None, _NO_VAL, 'lean',
                                        grid=(1e-3, 1e-2))
    self.assertAlmostEqual(best, 1.0)
    np.testing.assert_allclose(sorted(scores), [1e-3, 1e-2, 1e-1, 1, 10])

    # A flat edge does not grow the grid.
    fits.clear()
    self.enter_context(absltest.mock.patch.object(
        protocol, '_accuracy', lambda fit, *a: 0.5))
    best, scores, _, _ = protocol.select_c(None, None, None, _NO_VAL, 'lean',
                                        grid=(1e-3, 1e-2))
    self.assertEqual((best, len(scores)), (1e-3, 2))

  def test_sweep_stops_after_the_peak(self):
    # Scores peaked at C = 1e-3: with patience 2, 1e-2 and 1e-1 are fitted
    # and score lower, so 1 is skipped; without patience every C is fitted.
    fits = []

    def fake_fit(x, y, rows, C, solver, init=None,  # pylint: disable=C0103
                 basis=None, spectrum=None):
      del x, y, rows, solver, init, basis, spectrum
      fits.append(C)
      return {'C': C, 'theta': None}, 0.0

    self.enter_context(absltest.mock.patch.object(protocol, '_fit', fake_fit))
    self.enter_context(absltest.mock.patch.object(
        protocol, '_accuracy', lambda fit, *a: -abs(np.log10(fit['C']) + 3)))
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    best, scores, _, _ = protocol.select_c(None, None, None, _NO_VAL, 'lean',
                                           grid=grid, patience=2)
    self.assertAlmostEqual(best, 1e-3)
    np.testing.assert_allclose(fits, grid[:4])
    self.assertLen(scores, 4)
    fits.clear()
    best, scores, _, _ = protocol.select_c(None, None, None, _NO_VAL, 'lean',
                                           grid=grid, patience=None)
    self.assertAlmostEqual(best, 1e-3)
    np.testing.assert_allclose(fits, grid)
    # A best C at the bottom edge still widens the grid downwards.
    fits.clear()
    self.enter_context(absltest.mock.patch.object(
        protocol, '_accuracy', lambda fit, *a: -abs(np.log10(fit['C']) + 5)))
    best, _, _, _ = protocol.select_c(None, None, None, _NO_VAL, 'lean',
                                      grid=grid, patience=2)
    self.assertAlmostEqual(best, 1e-5)
    np.testing.assert_allclose(fits, [1e-4, 1e-3, 1e-2, 1e-5, 1e-6])

  def test_run_reports_both_settings(self):
    x, y = _data(n=1200)
    tx, ty = _data(n=400, seed=1)
    results = protocol.run(x, y, tx, ty, val_per_class=50,
                           subset_per_class=40, num_subsets=3,
                           grid=(1e-3, 1e-2, 1e-1))
    a, p = results['all_labels'], results['per_class']
    self.assertGreater(a['test_accuracy'], 0.5)
    self.assertEqual(a['rows'], 1200)
    self.assertLen(p['accuracies'], 3)
    self.assertAlmostEqual(p['mean'], np.mean(p['accuracies']))
    table = protocol.markdown_table([('test', results), ('again', results)])
    self.assertLen(table.splitlines(), 4)
    self.assertIn('| test | 30 | 1,200 |', table)
    self.assertIn('| again | 30 | 1,200 |', table)
    self.assertIn('| 40 per class, mean', table.splitlines()[0])

  def test_one_part_alone(self):
    x, y = _data(n=1200)
    tx, ty = _data(n=400, seed=1)
    kwargs = dict(val_per_class=50, subset_per_class=40, num_subsets=2,
                  grid=(1e-3, 1e-2))
    saved = []
    both = protocol.run(x, y, tx, ty, on_part=lambda r: saved.append(
        sorted(r)), **kwargs)
    # What is done is handed over after each part, for the caller to save.
    self.assertIn('all_labels', saved[0])
    self.assertNotIn('per_class', saved[0])
    self.assertIn('per_class', saved[1])
    alone = protocol.run(x, y, tx, ty, parts=('per_class',), **kwargs)
    self.assertNotIn('all_labels', alone)
    # The same validation split and subsets: the same numbers.
    self.assertEqual(alone['per_class']['accuracies'],
                     both['per_class']['accuracies'])
    row = protocol.markdown_table([('test', alone)]).splitlines()[-1]
    self.assertTrue(row.startswith('| test | 30 | 1,200 | - | - | '), row)
    with self.assertRaisesRegex(ValueError, 'Unknown protocol parts'):
      protocol.run(x, y, tx, ty, parts=('subsets',), **kwargs)

  def test_too_few_rows_for_the_subsets_is_refused_first(self):
    x, y = _data(n=300)
    tx, ty = _data(n=100, seed=1)
    self.enter_context(absltest.mock.patch.object(
        protocol, '_all_labels', lambda *a: self.fail('fitted first')))
    with self.assertRaisesRegex(ValueError, r'subset_per_class=400\)'):
      protocol.run(x, y, tx, ty, val_per_class=10)
    with self.assertRaisesRegex(ValueError, 'val_per_class=500 of each'):
      protocol.run(x, y, tx, ty)
    # 75 rows a class: a validation split of 75 would leave a class with
    # nothing to fit on, even for the all-labels part alone.
    with self.assertRaisesRegex(ValueError, 'val_per_class=75 of each'):
      protocol.run(x, y, tx, ty, val_per_class=75, parts=('all_labels',))

  def test_subsets_with_fewer_rows_than_dims_use_a_kernel_basis(self):
    x, y = _data(n=400, d=120)
    tx, ty = _data(n=200, d=120, seed=1)
    results = protocol.run(x, y, tx, ty, val_per_class=20,
                           subset_per_class=10, num_subsets=2,
                           grid=(1e-2, 1e-1), solver='lean')
    self.assertIn('kernel basis', results['per_class']['solver_reason'])
    self.assertNotIn('kernel basis', results['all_labels']['solver_reason'])
    self.assertGreater(results['per_class']['mean'], 0.5)

  def test_liblinear_refused_past_int32(self):
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32),
                                        (80_000, 28_672), (0, 0))
    with self.assertRaisesRegex(ValueError, 'int32'):
      protocol._plan(x, np.arange(80_000), 2**40, 'liblinear')


class CompareSolversTest(absltest.TestCase):

  def test_on_an_export_folder(self):
    x, y = _data(n=400, seed=4)
    tx, ty = _data(n=100, seed=4)
    d = self.enter_context(tempfile.TemporaryDirectory())
    for name, value in (('train_features', x), ('train_labels', y),
                        ('test_features', tx), ('test_labels', ty)):
      np.save(f'{d}/{name}.npy', value)
    out = protocol.compare_solvers(d, 0.01, per_class=50)
    self.assertEqual(out['rows'], 200)
    lean, lib = out['lean']['objective'], out['liblinear']['objective']
    self.assertLess(abs(lean - lib) / lib, 1e-3)

  def test_time_sweep_fit(self):
    x, y = _data(n=400, seed=5)
    d = self.enter_context(tempfile.TemporaryDirectory())
    np.save(f'{d}/train_features.npy', x)
    np.save(f'{d}/train_labels.npy', y)
    out = protocol.time_sweep_fit(d, 0.01, val_per_class=10)
    self.assertEqual(out['rows'], 400 - 10 * len(np.unique(y)))
    self.assertTrue(out['converged'])
    self.assertGreater(out['passes'], 1)
    self.assertBetween(out['val_accuracy'], 0.0, 1.0)


if __name__ == '__main__':
  absltest.main()
