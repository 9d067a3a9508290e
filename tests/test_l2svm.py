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
    # A decaying spectrum, as conv features have.
    rng = np.random.default_rng(4)
    rotation = np.linalg.qr(rng.normal(size=(60, 60)))[0]
    x = (rng.normal(size=(500, 60)) * 0.93**np.arange(60) @ rotation * 5
         + 1).astype(np.float32)
    xt = np.concatenate([x, np.ones((len(x), 1), np.float32)], 1)
    true = np.linalg.eigvalsh(xt.astype(np.float64).T @ xt)[::-1]
    rows = np.arange(0, 500, 2)
    spec = l2svm.row_spectrum(x, rows, exact_dims=10, sample=20, power=0)
    r = len(spec.lam)
    self.assertBetween(r, 1, 20)
    np.testing.assert_allclose(spec.v.T @ spec.v, np.eye(r), atol=1e-5)
    self.assertTrue(np.all(np.diff(spec.lam) <= 0))  # Largest first.
    # z and the tail energy cover every row of x, fitted or not.
    np.testing.assert_allclose(spec.z, xt @ spec.v, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        spec.tail_energy, np.sum(xt**2, 1) - np.sum(spec.z**2, 1),
        rtol=1e-4, atol=1e-2)
    # Ritz values interlace: the i-th largest is at most the true one, and
    # a subspace iteration brings the leading ones closer to the truth.
    true = np.linalg.eigvalsh(
        xt[rows].astype(np.float64).T @ xt[rows])[::-1]
    self.assertTrue(np.all(spec.lam <= true[:r] * 1.0001))
    refined = l2svm.row_spectrum(x, rows, exact_dims=10, sample=20, power=1)
    self.assertTrue(np.all(refined.lam <= true[:len(refined.lam)] * 1.0001))
    self.assertLess(np.sum(true[:5] - refined.lam[:5]),
                    0.5 * np.sum(true[:5] - spec.lam[:5]))
    # A sample spanning every row gives the exact spectrum, nothing left.
    spec = l2svm.row_spectrum(x[:40], exact_dims=10, sample=100)
    xt = xt[:40].astype(np.float64)
    np.testing.assert_allclose(spec.lam, np.linalg.eigvalsh(xt @ xt.T)[::-1],
                               rtol=1e-4)
    self.assertLess(spec.tail_energy.max(), 1e-4 * spec.lam.max())
    # The exact spectrum leaves nothing outside it.
    exact = l2svm.row_spectrum(x[:40])
    np.testing.assert_array_equal(exact.tail_energy, 0.0)
    np.testing.assert_allclose(exact.lam[:40], spec.lam, rtol=1e-4)

  def test_any_preconditioner_reaches_the_same_optimum(self):
    x, y = _blobs(n=500, d=60, seed=4)
    exact = l2svm.fit_squared_hinge(x, y, 0.01, tol=1e-12)
    for sample, power, block in ((5, 0, 0), (30, 1, 4), (30, 0, 256)):
      fit = l2svm.fit_squared_hinge(
          x, y, 0.01, tol=1e-12, block=block,
          spectrum=l2svm.row_spectrum(x, exact_dims=10, sample=sample,
                                      power=power))
      self.assertTrue(fit['converged'])
      self.assertLess(abs(fit['objective'] - exact['objective']),
                      1e-8 * exact['objective'])

  def test_spectrum_of_some_rows_or_all_serves_any_fit(self):
    # z of every row of x or of the fitted rows only, for a fit that copies
    # its rows (under half of x) or reads all of x with the others masked.
    x, y = _blobs(seed=7)
    for rows in (np.arange(0, 600, 3), np.arange(600)[np.arange(600) % 5 > 0]):
      ref = l2svm.fit_squared_hinge(x[rows], y[rows], 0.01, tol=1e-12)
      for all_rows in (True, False):
        spec = l2svm.row_spectrum(x, rows, all_rows=all_rows)
        self.assertLen(spec.z, 600 if all_rows else len(rows))
        fit = l2svm.fit_squared_hinge(x, y[rows], 0.01, rows=rows,
                                      spectrum=spec, tol=1e-12)
        self.assertLess(abs(fit['objective'] - ref['objective']),
                        1e-8 * ref['objective'])

  def test_full_block_scaling_is_the_inverse_hessian(self):
    # With the exact spectrum and a block over all of it, each class's M is
    # (I + 2 C X~^T D_k X~)^-1 for its own active rows D_k.
    x, y = _blobs(n=200, d=12, seed=5)
    spec = l2svm.row_spectrum(x)
    C = 0.05  # pylint: disable=invalid-name
    classes = np.unique(y)
    problem = l2svm._problem(x, y, classes, C, None)  # pylint: disable=W0212
    rng = np.random.default_rng(0)
    active = (rng.random((200, len(classes))) < 0.4).astype(np.float32)
    scaling = l2svm._Scaling(spec, C, active, block=64)  # pylint: disable=W0212
    q = rng.normal(size=(13, len(classes)))
    _, hq = problem.hessian_product(q, active)
    np.testing.assert_allclose(scaling.apply(hq), q, rtol=1e-4, atol=1e-5)
    # Then one conjugate-gradient step per Newton step is enough.
    fit = l2svm.fit_squared_hinge(x, y, C, spectrum=spec, block=64)
    self.assertLessEqual(fit['passes'], 2 * fit['iterations'] + 2)

  def test_tolerance_bounds_the_objective_gap(self):
    x, y = _blobs(n=600, d=40, seed=6)
    for C in (1e-3, 1.0):  # pylint: disable=invalid-name
      best = l2svm.fit_squared_hinge(x, y, C, tol=1e-14)['objective']
      for tol in (1e-3, 1e-6):
        fit = l2svm.fit_squared_hinge(x, y, C, tol=tol)
        self.assertBetween((fit['objective'] - best) / best, -1e-12,
                           10 * tol)


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
