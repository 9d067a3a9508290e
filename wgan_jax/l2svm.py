"""A memory-lean solver for LinearSVC's objective, and the choice of solver.

`sklearn.svm.LinearSVC` (liblinear) copies the features to float64 and then
into its own (index, value) list: about 24 bytes per feature value, 34 GB for
50,000 x 28,672. The solver here minimises the same objective, one-vs-rest,

  f_k(w, b) = 1/2 (||w||^2 + b^2) + C sum_i max(0, 1 - y_ik (w.x_i + b))^2

(squared hinge, L2; the intercept is a constant feature of value 1 and is
regularised, as in liblinear with intercept_scaling=1), on float32 features
read in row chunks, so it needs little beyond the features themselves. All
classes are solved at once: each pass over the rows serves every class. The
optimiser is scipy's trust-region Newton-CG (liblinear's primal solver is a
trust-region Newton method too), with the generalised Hessian of the squared
hinge.
"""

import time
from typing import Any
import warnings

from absl import logging
import numpy as np
from scipy import optimize
from sklearn import exceptions
from sklearn import svm

# liblinear stores each value with its int32 index in one array, terminated
# per row; more than this many entries overflow its counters.
LIBLINEAR_MAX_ENTRIES = 2**31 - 1
_CHUNK_BYTES = 256 * 2**20


def fit_linear_svm(
    x: np.ndarray,
    y: np.ndarray,
    C: float,  # pylint: disable=invalid-name
    max_iter: int = 2000,
    seed: int = 0,
) -> svm.LinearSVC:
  """Fits an L2-regularised squared-hinge linear SVM on raw features.

  Features are deliberately not scaled: the DCGAN protocol trains the SVM
  on the concatenated, max-pooled critic activations as they are. A
  ConvergenceWarning is logged rather than raised; callers can detect it by
  `np.max(model.n_iter_) >= max_iter`, the test sklearn itself uses.

  Args:
    x: features [N, D].
    y: int labels [N].
    C: inverse regularisation strength.
    max_iter: iteration cap of liblinear.
    seed: seed of liblinear's coordinate shuffling.

  Returns:
    The fitted sklearn.svm.LinearSVC.
  """
  model = svm.LinearSVC(
      C=C,
      loss='squared_hinge',
      penalty='l2',
      dual='auto',
      max_iter=max_iter,
      random_state=seed,
  )
  with warnings.catch_warnings(record=True) as caught:
    # 'always' so the warning is recorded here even if the caller's filters
    # would have raised it as an error or shown it only once.
    warnings.simplefilter('always')
    model.fit(x, y)
  for warning in caught:
    if issubclass(warning.category, exceptions.ConvergenceWarning):
      logging.warning(
          'LinearSVC did not converge in %d iterations (C=%g): %s',
          max_iter,
          C,
          warning.message,
      )
    else:
      # Anything else is not ours to hide; hand it back to the caller.
      warnings.warn_explicit(
          warning.message, warning.category, warning.filename, warning.lineno
      )
  return model


def liblinear_bytes(n_rows: int, n_features: int) -> int:
  """Estimated peak bytes of LinearSVC.fit on dense float32 features.

  The float64 copy (8 bytes a value), liblinear's feature_node list (16
  bytes a value, plus the bias and a terminator per row) and the float32
  input itself.
  """
  values = n_rows * n_features
  return values * (8 + 4) + n_rows * (n_features + 2) * 16


def choose_solver(n_rows: int, n_features: int, budget_bytes: int) -> tuple[
    str, str]:
  """Picks 'liblinear' where it fits in `budget_bytes`, else 'lean'.

  Returns:
    (solver, reason) with the reason in words, for the log and the results.
  """
  need = liblinear_bytes(n_rows, n_features)
  gib = lambda b: f'{b / 2**30:.1f} GiB'
  entries = n_rows * (n_features + 2)
  if entries > LIBLINEAR_MAX_ENTRIES:
    return 'lean', (f'{entries:,} values overflow liblinear\'s int32 '
                    'counters')
  if need > budget_bytes:
    return 'lean', (f'LinearSVC needs about {gib(need)}, over the '
                    f'{gib(budget_bytes)} budget')
  return 'liblinear', f'LinearSVC needs about {gib(need)}, within budget'


def _chunks(n_rows: int, n_features: int):
  step = max(1, _CHUNK_BYTES // (4 * max(n_features, 1)))
  for start in range(0, n_rows, step):
    yield start, min(start + step, n_rows)


class _Problem:
  """The one-vs-rest objective over float32 rows, with cached margins."""

  def __init__(self, x, signs, C, rows=None):  # pylint: disable=invalid-name
    self.x, self.signs, self.C, self.rows = x, signs, C, rows
    self.n = x.shape[0] if rows is None else len(rows)
    self.d = x.shape[1]
    self.k = signs.shape[1]
    self.passes = 0
    self._key = None

  def _read(self, lo, hi):
    """Rows lo:hi of the problem as float32 (a copy of one chunk at most)."""
    part = self.x[lo:hi] if self.rows is None else self.x[self.rows[lo:hi]]
    return np.asarray(part, dtype=np.float32)

  def _split(self, theta):
    theta = theta.reshape(self.d + 1, self.k)
    return theta[:-1].astype(np.float32), theta[-1]

  def _margins(self, theta):
    """Caches z = X w + b and the gradient's X^T term for this theta."""
    key = theta.tobytes()
    if key == self._key:
      return
    w, b = self._split(theta)
    z = np.empty((self.n, self.k), np.float64)
    grad_w = np.zeros((self.d, self.k), np.float64)
    for lo, hi in _chunks(self.n, self.d):
      xc = self._read(lo, hi)
      z[lo:hi] = xc @ w + b
      slack = np.maximum(0.0, 1.0 - self.signs[lo:hi] * z[lo:hi])
      grad_w -= xc.T @ (self.signs[lo:hi] * slack).astype(np.float32)
    self.passes += 1
    slack = np.maximum(0.0, 1.0 - self.signs * z)
    self._key, self.z, self.slack = key, z, slack
    self._grad_w, self._grad_b_sum = grad_w, -np.sum(self.signs * slack, 0)

  def value_per_class(self, theta):
    self._margins(theta)
    t = theta.reshape(self.d + 1, self.k)
    return 0.5 * np.sum(t * t, 0) + self.C * np.sum(self.slack ** 2, 0)

  def fun(self, theta):
    return float(np.sum(self.value_per_class(theta)))

  def jac(self, theta):
    self._margins(theta)
    t = theta.reshape(self.d + 1, self.k)
    grad = t.copy()
    grad[:-1] += 2 * self.C * self._grad_w
    grad[-1] += 2 * self.C * self._grad_b_sum
    return grad.ravel()

  def hessp(self, theta, v):
    self._margins(theta)
    active = (self.slack > 0).astype(np.float32)
    vw, vb = self._split(v)
    out_w = np.zeros((self.d, self.k), np.float64)
    out_b = np.zeros((self.k,), np.float64)
    for lo, hi in _chunks(self.n, self.d):
      xc = self._read(lo, hi)
      r = active[lo:hi] * (xc @ vw + vb.astype(np.float32))
      out_w += xc.T @ r
      out_b += r.sum(0)
    self.passes += 1
    out = v.reshape(self.d + 1, self.k).copy()
    out[:-1] += 2 * self.C * out_w
    out[-1] += 2 * self.C * out_b
    return out.ravel()


def fit_squared_hinge(x, y, C, *, rows=None,  # pylint: disable=C0103
                      tol: float = 1e-4, max_iter: int = 100,
                      init=None) -> dict[str, Any]:
  """Minimises LinearSVC's one-vs-rest objective with bounded memory.

  Args:
    x: features [N, D], float32, an array or a memory map.
    y: integer labels of the rows used.
    rows: sorted indices of the rows of x to fit on (all when None); read
      chunk by chunk, so a subset is never copied whole.
    C: LinearSVC's C.
    tol: stop when the gradient norm falls under tol times its value at
      zero (liblinear's primal stopping rule, with its eps).
    max_iter: Newton iterations at most.
    init: a previous result's 'theta' to start from (a C path), or None.

  Returns:
    dict with 'coef' [K, D], 'intercept' [K], 'classes' [K], 'theta' (for
    warm starts), 'objective' (sum over classes of f_k), 'objective_per_class',
    'passes' over the data, 'iterations', 'seconds', 'converged'.
  """
  classes = np.unique(y)
  if len(classes) < 3:
    # LinearSVC fits a single classifier for two classes, not two.
    raise ValueError('The lean solver handles three or more classes.')
  signs = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
  problem = _Problem(x, signs, C, rows)
  zero = np.zeros((x.shape[1] + 1) * len(classes))
  gtol = tol * np.linalg.norm(problem.jac(zero))
  start = time.perf_counter()
  res = optimize.minimize(problem.fun, zero if init is None else init,
                          jac=problem.jac, hessp=problem.hessp,
                          method='trust-ncg',
                          options=dict(gtol=gtol, maxiter=max_iter))
  theta = res.x.reshape(x.shape[1] + 1, len(classes))
  seconds = time.perf_counter() - start
  logging.info('lean solver: C=%g, %d iterations, %d passes, %.1f s, %s',
               C, res.nit, problem.passes, seconds, res.message)
  return dict(coef=theta[:-1].T.copy(), intercept=theta[-1].copy(),
              classes=classes, theta=res.x,
              objective=float(res.fun),
              objective_per_class=problem.value_per_class(res.x).tolist(),
              passes=problem.passes, iterations=int(res.nit),
              seconds=seconds, converged=bool(res.success))


def ovr_objective(x, y, classes, coef, intercept, C,  # pylint: disable=C0103
                  rows=None) -> np.ndarray:
  """f_k for each class of a fitted (coef [K, D], intercept [K]) model."""
  signs = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
  theta = np.concatenate([coef.T, intercept[None, :]]).ravel()
  return _Problem(x, signs, C, rows).value_per_class(theta)


def predict(x, classes, coef, intercept) -> np.ndarray:
  """Labels by the largest one-vs-rest score, as LinearSVC predicts."""
  out = np.empty((x.shape[0],), classes.dtype)
  w = coef.T.astype(np.float32)
  for lo, hi in _chunks(x.shape[0], x.shape[1]):
    scores = np.asarray(x[lo:hi], dtype=np.float32) @ w + intercept
    out[lo:hi] = classes[np.argmax(scores, axis=1)]
  return out

