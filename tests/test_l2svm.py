"""The lean solver minimises LinearSVC's objective; the solver choice."""

import warnings

from absl.testing import absltest
import numpy as np

from wgan_jax import l2svm


def _blobs(n=600, d=40, k=4, spread=0.5, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(k, d))
  y = rng.integers(0, k, n)
  x = centers[y] * spread + rng.normal(size=(n, d))
  return x.astype(np.float32), y


class LeanSolverTest(absltest.TestCase):

  def test_same_objective_and_predictions_as_liblinear(self):
    x, y = _blobs()
    for C in (1e-3, 1e-1):  # pylint: disable=invalid-name
      ref = l2svm.fit_linear_svm(x, y, C, max_iter=20_000)
      ref_obj = l2svm.ovr_objective(x, y, ref.classes_, ref.coef_,
                                    ref.intercept_, C).sum()
      fit = l2svm.fit_squared_hinge(x, y, C)
      self.assertTrue(fit['converged'])
      # The lean solver's optimum is never worse, and at most 0.1% apart.
      self.assertLess(abs(fit['objective'] - ref_obj) / ref_obj, 1e-3)
      pred = l2svm.predict(x, fit['classes'], fit['coef'], fit['intercept'])
      self.assertGreater(np.mean(pred == ref.predict(x)), 0.99)

  def test_separable_data_is_fit_exactly(self):
    x, y = _blobs(n=300, spread=8.0, seed=1)
    fit = l2svm.fit_squared_hinge(x, y, 1.0)
    pred = l2svm.predict(x, fit['classes'], fit['coef'], fit['intercept'])
    np.testing.assert_array_equal(pred, y)
    ref = l2svm.fit_linear_svm(x, y, 1.0)
    np.testing.assert_array_equal(ref.predict(x), y)

  def test_rows_subset_equals_copy(self):
    x, y = _blobs(seed=2)
    rows = np.arange(0, len(y), 3)
    a = l2svm.fit_squared_hinge(x, y[rows], 0.01, rows=rows)
    b = l2svm.fit_squared_hinge(x[rows], y[rows], 0.01)
    np.testing.assert_allclose(a['coef'], b['coef'], rtol=1e-5, atol=1e-7)
    # Most of the rows: read in place with the others weighted 0.
    rows = np.arange(len(y))[np.arange(len(y)) % 5 != 0]
    a = l2svm.fit_squared_hinge(x, y[rows], 0.01, rows=rows)
    b = l2svm.fit_squared_hinge(x[rows], y[rows], 0.01)
    np.testing.assert_allclose(a['coef'], b['coef'], rtol=1e-5, atol=1e-7)

  def test_no_warnings_escape(self):
    x, y = _blobs(seed=3)
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      l2svm.fit_squared_hinge(x, y, 0.01)
      l2svm.fit_linear_svm(x, y, 10.0, max_iter=2)  # Does not converge.

  def test_subspace_spectrum(self):
    x, y = _blobs(n=500, d=60, seed=4)
    xt = np.concatenate([x, np.ones((len(x), 1), np.float32)], 1)
    true = np.linalg.eigvalsh(xt.astype(np.float64).T @ xt)
    v, lam, tail = l2svm.row_spectrum(x, exact_dims=10, sample=20)
    r = len(lam)
    self.assertBetween(r, 1, 20)
    np.testing.assert_allclose(v.T @ v, np.eye(r), atol=1e-5)
    # Ritz values interlace: the i-th largest is at most the true one.
    self.assertTrue(np.all(np.sort(lam)[::-1] <= true[::-1][:r] * 1.0001))
    # The tail is the mean of what the kept pairs leave of the trace, and
    # those kept stand above it.
    self.assertAlmostEqual(tail, (true.sum() - lam.sum()) / (61 - r),
                           delta=1e-3 * tail)
    self.assertGreater(lam.min(), 2 * tail)
    # A sample spanning every row gives the exact spectrum and no tail.
    v, lam, tail = l2svm.row_spectrum(x[:40], exact_dims=10, sample=100)
    xt = xt[:40].astype(np.float64)
    np.testing.assert_allclose(np.sort(lam)[-40:],
                               np.linalg.eigvalsh(xt @ xt.T), rtol=1e-4)
    self.assertLess(tail, 1e-3 * lam.max())
    # Any of these preconditioners leaves the optimum where it is.
    exact = l2svm.fit_squared_hinge(x, y, 0.01, tol=1e-6)
    for sample in (5, 30):
      fit = l2svm.fit_squared_hinge(
          x, y, 0.01, tol=1e-6,
          spectrum=l2svm.row_spectrum(x, exact_dims=10, sample=sample))
      self.assertTrue(fit['converged'])
      self.assertLess(abs(fit['objective'] - exact['objective']),
                      1e-6 * exact['objective'])


class KernelBasisTest(absltest.TestCase):

  def test_same_objective_as_the_primal_fit(self):
    # 90 rows, 200 dims: the basis has at most 90 columns.
    x, y = _blobs(n=90, d=200, spread=0.3, seed=4)
    rows = np.arange(90)
    basis = l2svm.KernelBasis(x, rows)
    self.assertLessEqual(basis.z.shape[1], 90)
    for C in (1e-3, 1e-1):  # pylint: disable=invalid-name
      primal = l2svm.fit_squared_hinge(x, y, C, tol=1e-8)
      for solver in ('lean', 'liblinear'):
        if solver == 'lean':
          coef_z = l2svm.fit_squared_hinge(basis.z, y, C, tol=1e-8,
                                           fit_intercept=False)['coef']
        else:
          coef_z = l2svm.fit_linear_svm(basis.z, y, C, max_iter=100_000,
                                        fit_intercept=False).coef_
        coef, bias = basis.lift(coef_z)
        obj = l2svm.ovr_objective(x, y, primal['classes'], coef, bias,
                                  C).sum()
        self.assertLess(abs(obj - primal['objective']) / obj, 1e-4)
        np.testing.assert_allclose(coef, primal['coef'], atol=1e-3)


class ChooseSolverTest(absltest.TestCase):

  def test_choice_follows_memory_and_int32_limit(self):
    gib = 2**30
    self.assertEqual(l2svm.choose_solver(4_000, 28_672, 16 * gib)[0],
                     'liblinear')
    solver, why = l2svm.choose_solver(50_000, 28_672, 16 * gib)
    self.assertEqual(solver, 'lean')
    self.assertIn('GiB', why)
    # 80,000 x 28,672 values overflow liblinear's int32 counters however
    # much memory there is.
    solver, why = l2svm.choose_solver(80_000, 28_672, 10_000 * gib)
    self.assertEqual(solver, 'lean')
    self.assertIn('int32', why)
    self.assertGreater(l2svm.liblinear_bytes(50_000, 28_672), 30 * gib)


if __name__ == '__main__':
  absltest.main()
