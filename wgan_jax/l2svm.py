"""A memory-lean solver for LinearSVC's objective, and the choice of solver.

`sklearn.svm.LinearSVC` (liblinear) copies the features to float64 and then
into its own (index, value) list: about 24 bytes per feature value, 34 GB for
50,000 x 28,672. The solver here minimises the same objective, one-vs-rest,

  f_k(w, b) = 1/2 (||w||^2 + b^2) + C sum_i max(0, 1 - y_ik (w.x_i + b))^2

(squared hinge, L2; the intercept is a constant feature of value 1 and is
regularised, as in liblinear with intercept_scaling=1), on float32 features
read in row chunks, so it needs little beyond the features themselves. All
classes are solved at once: each pass over the rows serves every class. The
optimiser is a preconditioned truncated Newton method with the generalised
Hessian of the squared hinge and an exact line search (`fit_squared_hinge`).
"""

import dataclasses
import time
from typing import Any
import warnings

from absl import logging
import numpy as np
from scipy import linalg
from sklearn import exceptions
from sklearn import svm

# liblinear stores each value with its int32 index in one array, terminated
# per row; more than this many entries overflow its counters.
LIBLINEAR_MAX_ENTRIES = 2**31 - 1
# Row chunks small enough to stay in a 32 MiB L3 cache between the two
# products of a pass (X w, then X^T s), so each pass reads X from memory once.
_CHUNK_BYTES = 16 * 2**20


def fit_linear_svm(
    x: np.ndarray,
    y: np.ndarray,
    C: float,  # pylint: disable=invalid-name
    max_iter: int = 2000,
    seed: int = 0,
    fit_intercept: bool = True,
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
    fit_intercept: False for features that already hold the intercept
      (`KernelBasis.z`).

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
      fit_intercept=fit_intercept,
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
  """The one-vs-rest objective over float32 rows; every method is a pass.

  Rows outside the fit have weight 0 in `mask`: every pass then reads x in
  contiguous chunks (views of a memory map, never copies), which costs less
  than gathering a large row subset on every pass. theta is [p, K]: w over
  the D columns, then the intercept b when there is one.
  """

  def __init__(self, x, signs, C, mask=None,  # pylint: disable=invalid-name
               intercept=True):
    self.x, self.signs, self.C, self.mask = x, signs, C, mask
    self.n, self.d = x.shape
    self.k = signs.shape[1]
    self.intercept = intercept
    self.p = self.d + int(intercept)
    self.passes = 0

  def _split(self, theta):
    """(w [D, K] float32, b [K] float32); b is 0 without an intercept."""
    b = theta[-1] if self.intercept else np.zeros((self.k,))
    return theta[:self.d].astype(np.float32), b.astype(np.float32)

  def _join(self, grad_w, grad_b):
    return (np.concatenate([grad_w, grad_b[None]]) if self.intercept
            else grad_w)

  def margins(self, theta):
    """X~ theta [n, K], float64."""
    w, b = self._split(theta)
    out = np.empty((self.n, self.k), np.float64)
    for lo, hi in _chunks(self.n, self.d):
      out[lo:hi] = np.asarray(self.x[lo:hi], dtype=np.float32) @ w + b
    self.passes += 1
    return out

  def slack(self, margins):
    """max(0, 1 - y z), 0 on rows outside the fit."""
    s = np.maximum(0.0, 1.0 - self.signs * margins)
    return s if self.mask is None else s * self.mask[:, None]

  def value_per_class(self, theta, slack=None):
    if slack is None:
      slack = self.slack(self.margins(theta))
    return 0.5 * np.sum(theta * theta, 0) + self.C * np.sum(slack**2, 0)

  def gradient(self, theta, slack):
    """theta - 2 C X~^T (y s)."""
    ys = self.signs * slack
    grad_w = np.zeros((self.d, self.k), np.float64)
    for lo, hi in _chunks(self.n, self.d):
      xc = np.asarray(self.x[lo:hi], dtype=np.float32)
      # (s^T X)^T rather than X^T s: BLAS runs the former faster here.
      grad_w += (ys[lo:hi].astype(np.float32).T @ xc).T
    self.passes += 1
    return theta - 2 * self.C * self._join(grad_w, ys.sum(0))

  def hessian_product(self, q, active):
    """(X~ q, H q) with H = I + 2 C X~^T D X~, D the active rows."""
    qw, qb = self._split(q)
    xq = np.empty((self.n, self.k), np.float64)
    out_w = np.zeros((self.d, self.k), np.float64)
    for lo, hi in _chunks(self.n, self.d):
      xc = np.asarray(self.x[lo:hi], dtype=np.float32)
      z = xc @ qw + qb
      xq[lo:hi] = z
      out_w += ((active[lo:hi] * z).T @ xc).T
    self.passes += 1
    out_b = np.sum(active * xq, 0)
    return xq, q + 2 * self.C * self._join(out_w, out_b)


def _signs(y, classes):
  return np.where(y[:, None] == classes[None, :], 1.0, -1.0)


def _problem(x, y, classes, C, rows,  # pylint: disable=invalid-name
             intercept=True):
  """The objective on x[rows]: masked when rows are most of x, else copied."""
  if rows is None:
    return _Problem(x, _signs(y, classes), C, intercept=intercept)
  rows = np.asarray(rows)
  if 2 * len(rows) < x.shape[0]:
    return _Problem(np.asarray(x[rows], np.float32), _signs(y, classes), C,
                    intercept=intercept)
  signs = np.zeros((x.shape[0], len(classes)))
  signs[rows] = _signs(y, classes)
  mask = np.zeros((x.shape[0],), np.float64)
  mask[rows] = 1.0
  return _Problem(x, signs, C, mask, intercept)


@dataclasses.dataclass
class Spectrum:
  """Directions of X~^T X~ for the preconditioner, and every row in them.

  Attributes:
    v: [p, r] orthonormal float32 columns, by decreasing eigenvalue; None
      stands for the identity (features that are already such coordinates,
      as `KernelBasis.z`).
    lam: [r] their (estimated) eigenvalues over the fitted rows.
    z: [N, r] float32, X~ v for every row of x, fitted or not (the refit of
      the protocol adds rows to those the spectrum was made from), or for
      the fitted rows only (`row_spectrum(all_rows=False)`).
    tail_energy: [N] ||x~_i||^2 - ||z_i||^2, what v leaves of each row.
  """

  v: np.ndarray | None
  lam: np.ndarray
  z: np.ndarray
  tail_energy: np.ndarray

  def rows(self, rows) -> 'Spectrum':
    """The same spectrum with z and tail_energy of those rows only."""
    return Spectrum(self.v, self.lam, self.z[rows], self.tail_energy[rows])

  def scatter(self, rows, n) -> 'Spectrum':
    """z and tail_energy of `rows` placed at those rows among n, others 0.

    For a fit that reads all n rows with weight 0 outside `rows`: those
    rows are never active, so their z does not matter.
    """
    z = np.zeros((n, self.z.shape[1]), np.float32)
    energy = np.zeros((n,))
    z[rows], energy[rows] = self.z, self.tail_energy
    return Spectrum(self.v, self.lam, z, energy)


class _Scaling:
  """The preconditioner M ~ H_k^-1 of the conjugate gradients, per class.

  H_k = I + 2 C X~^T D_k X~, with D_k the class's active rows. In the basis
  v: its exact block on the `block` leading directions (a Cholesky factor
  per class), its diagonal on the others, both from the active rows' z;
  outside v, 1 + 2 C t_k with t_k the active rows' mean energy per
  remaining dimension. Renewed every Newton step: the active rows, not all
  rows, set the curvature, and they differ from class to class.
  """

  def __init__(self, spectrum, C, active, block):  # pylint: disable=C0103
    self.v = spectrum.v
    z, k = spectrum.z, active.shape[1]
    self.block = min(block, z.shape[1])
    self.factors = []
    for c in range(k):
      zc = z[active[:, c] > 0, :self.block]
      gram = 2.0 * C * (zc.T @ zc).astype(np.float64)
      gram[np.diag_indices_from(gram)] += 1.0
      self.factors.append(linalg.cho_factor(gram, lower=True,
                                            check_finite=False))
    diag = np.zeros((z.shape[1] - self.block, k))
    for lo, hi in _chunks(z.shape[0], z.shape[1]):
      rest = z[lo:hi, self.block:]
      diag += (active[lo:hi].T @ (rest * rest)).T
    self.h = 1.0 / (1.0 + 2.0 * C * diag)
    if self.v is None:
      self.h_tail = np.ones((1, k))
    else:
      dims = max(self.v.shape[0] - self.v.shape[1], 1)
      tail = active.T.astype(np.float64) @ spectrum.tail_energy / dims
      self.h_tail = 1.0 / (1.0 + 2.0 * C * tail[None, :])

  def apply(self, g):
    """M g for g [p, K]."""
    # v is float32: a float64 v would cost about as much per application
    # as a pass over the rows.
    proj = g if self.v is None else (
        self.v.T @ g.astype(np.float32)).astype(np.float64)
    out = np.empty_like(proj)
    b = self.block
    for c, factor in enumerate(self.factors):
      out[:b, c] = linalg.cho_solve(factor, proj[:b, c],
                                    check_finite=False)
    out[b:] = self.h * proj[b:]
    if self.v is None:
      return out
    return self.h_tail * g + self.v @ (out - self.h_tail * proj).astype(
        np.float32)

  def norm2(self, g):
    """g^T M g per class: about the squared Newton decrement at g."""
    return np.sum(g * self.apply(g), 0)


def _with_ones(xc, intercept):
  if not intercept:
    return xc
  return np.concatenate([xc, np.ones((len(xc), 1), np.float32)], axis=1)


def _rows_in_chunks(x, rows, intercept, p, chunk_bytes=_CHUNK_BYTES):
  """Yields (lo, hi, x~[rows[lo:hi]]) as float32 chunks of chunk_bytes."""
  step = max(1, chunk_bytes // (4 * p))
  for lo in range(0, len(rows), step):
    # Contiguous runs of rows are read as slices (no gather copy).
    idx = rows[lo:lo + step]
    part = (x[idx[0]:idx[-1] + 1] if idx[-1] - idx[0] == len(idx) - 1
            else x[idx])
    yield lo, lo + len(idx), _with_ones(np.asarray(part, np.float32),
                                        intercept)


def _orthonormal_columns(y):
  """An orthonormal basis of y's columns [p, s], p >> s, as float32.

  Cholesky QR twice in float64 (a Gram matrix, its Cholesky factor, a
  triangular solve: all level-3 BLAS), twice as fast here as LAPACK's
  Householder QR of a 28,673 x 4,000 matrix (18 s against 37 s); the second
  round repairs what the first lost to rounding. Householder QR where the
  Gram matrix is too ill-conditioned for a Cholesky factor.
  """
  q = np.asarray(y, np.float64)
  try:
    for _ in range(2):
      r = linalg.cholesky(q.T @ q, lower=False, check_finite=False)
      q = linalg.solve_triangular(r, q.T, trans='T', lower=False,
                                  check_finite=False).T
  except linalg.LinAlgError:
    q = np.linalg.qr(np.asarray(y, np.float32))[0]
  return np.ascontiguousarray(q, np.float32)


def row_spectrum(x, rows=None, *, intercept: bool = True,
                 exact_dims: int = 8192, sample: int = 4000, power: int = 1,
                 seed: int = 0, all_rows: bool = True) -> Spectrum:
  """Eigen-directions of X~^T X~ over the rows, for `fit_squared_hinge`.

  It depends on the rows only, so one serves every C of a sweep. Exact (a
  pass and a p x p eigh) up to `exact_dims` columns. Above, Rayleigh-Ritz
  with every row on a subspace of `sample` dimensions: the span of that
  many random rows, refined by `power` subspace iterations (each two passes
  with `sample` columns). Without the refinement the span of sampled rows
  misses many of the larger directions: on 45,000 x 28,672 critic features
  the space it left out still held eigenvalues near 30,000, eight times its
  smallest kept one, and conjugate gradients paid for them. Ritz pairs
  under twice the mean of what is left are dropped (the scaling outside v
  serves them as well).

  Args:
    x: features [N, D], an array or a memory map.
    rows: sorted row indices (all when None).
    intercept: whether X~ has the constant column of the intercept.
    exact_dims: the most columns for an exact decomposition.
    sample: rows whose span starts the subspace above that.
    power: subspace iterations on it.
    seed: seed of the row sample.
    all_rows: whether z covers every row of x (for fits on other rows
      too), or only `rows`, in their order.

  Returns:
    A Spectrum.
  """
  rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
  every = np.arange(x.shape[0]) if all_rows else rows
  fitted = np.zeros((x.shape[0],), bool)
  fitted[rows] = True
  fitted = fitted[every]
  p = x.shape[1] + int(intercept)
  # Products with thousands of columns stream those columns from memory
  # once a chunk: larger chunks than a pass's (1.5 times as fast at 4,000).
  wide = 8 * _CHUNK_BYTES
  start = time.perf_counter()
  if p <= exact_dims:
    gram = np.zeros((p, p))
    for _, _, xc in _rows_in_chunks(x, rows, intercept, p, wide):
      gram += xc.T @ xc
    lam, v = np.linalg.eigh(gram)
    keep = lam > 1e-10 * lam[-1]
    lam, v = lam[keep][::-1], v[:, keep][:, ::-1].astype(np.float32)
    z = np.empty((len(every), v.shape[1]), np.float32)
    for lo, hi, xc in _rows_in_chunks(x, every, intercept, p, wide):
      z[lo:hi] = xc @ v
    # What v leaves is the directions dropped above, next to nothing: 0
    # rather than the float32 rounding of ||x~||^2 - ||z||^2.
    tail_energy = np.zeros((len(every),))
  else:
    picked = rows
    if len(rows) > sample:
      picked = np.sort(np.random.default_rng(seed).choice(rows, sample,
                                                          False))
    # float32 throughout: a preconditioner needs the spectrum roughly, not
    # exactly, and float64 would double the cost of the largest products.
    q = _with_ones(np.asarray(x[picked], np.float32), intercept).T
    for _ in range(power):
      q = _orthonormal_columns(q)
      y = np.zeros_like(q)
      for _, _, xc in _rows_in_chunks(x, rows, intercept, p, wide):
        y += xc.T @ (xc @ q)
      q = y
    q = _orthonormal_columns(q)
    xq = np.empty((len(every), q.shape[1]), np.float32)
    energy = np.empty((len(every),))
    projected = np.zeros((q.shape[1],) * 2)
    for lo, hi, xc in _rows_in_chunks(x, every, intercept, p, wide):
      xq[lo:hi] = xc @ q
      energy[lo:hi] = np.einsum('ij,ij->i', xc, xc, dtype=np.float64)
      part = xq[lo:hi][fitted[lo:hi]]
      projected += part.T @ part
    lam, u = np.linalg.eigh(projected)
    trace = energy[fitted].sum()
    tail = max(trace - lam.sum(), 0.0) / max(p - len(lam), 1)
    keep = np.flatnonzero(lam > 2.0 * tail)[::-1]
    lam, u = lam[keep], u[:, keep].astype(np.float32)
    v, z = q @ u, xq @ u
    del xq
    tail_energy = np.maximum(
        energy - np.einsum('ij,ij->i', z, z, dtype=np.float64), 0.0)
  logging.info('preconditioner: %d directions (top eigenvalue %.4g, '
               'smallest kept %.4g, mean of the rest %.4g) in %.1f s',
               len(lam), lam[0], lam[-1],
               tail_energy[fitted].sum() / max(p - len(lam), 1),
               time.perf_counter() - start)
  return Spectrum(v, lam, z, tail_energy)


def _conjugate_gradients(problem, grad, active, scaling, forcing,
                         max_steps):
  """Approximately solves H d = -grad per class, preconditioned by M.

  Classes are independent problems that share each pass over the rows;
  each stops once the M-norm of its residual, sqrt(r^T M r), is under
  `forcing` times that of its gradient. (The Euclidean norm, liblinear's
  test, is ruled by the directions of largest curvature, where the
  objective gains least per unit of residual; on 28,672-dim critic
  features it took about twice the passes for the same progress.)

  Returns:
    (d [p, K], X~ d [n, K]): the direction and, accumulated from the passes
    already made, its margins (for the line search, at no extra pass).
  """
  d = np.zeros_like(grad)
  xd = np.zeros((problem.n, problem.k))
  r = -grad
  z = scaling.apply(r)
  q, rz = z, np.sum(r * z, 0)
  goal = forcing**2 * rz
  live = rz > goal
  for _ in range(max_steps):
    if not live.any():
      break
    xq, hq = problem.hessian_product(q, active)
    alpha = np.where(live, rz / np.maximum(np.sum(q * hq, 0), 1e-300), 0.0)
    d += alpha * q
    xd += alpha * xq
    r -= alpha * hq
    z = scaling.apply(r)
    rz_new = np.sum(r * z, 0)
    live &= rz_new > goal
    q = z + np.where(live, rz_new / np.maximum(rz, 1e-300), 0.0) * q
    rz = rz_new
  return d, xd


def _line_search(problem, theta, d, margins, xd, steps=50):
  """Per class, the exact minimiser t >= 0 of f_k(theta + t d).

  f_k along d is a convex piecewise quadratic in t, known from the margins
  of theta and of d without a pass: safeguarded Newton steps on its
  derivative, bisecting where a step leaves the bracket.
  """
  c, signs = problem.C, problem.signs
  mask = 1.0 if problem.mask is None else problem.mask[:, None]
  td, dd = np.sum(theta * d, 0), np.sum(d * d, 0)

  def slopes(t):
    m = (1.0 - signs * (margins + t * xd)) * mask
    act = m > 0
    first = td + t * dd - 2 * c * np.sum(np.where(act, signs * xd * m, 0), 0)
    second = dd + 2 * c * np.sum(np.where(act, xd * xd * mask, 0), 0)
    return first, second

  t = np.ones_like(dd)
  lo, hi = np.zeros_like(dd), np.full_like(dd, np.inf)
  for _ in range(steps):
    first, second = slopes(t)
    lo = np.where(first < 0, t, lo)
    hi = np.where(first > 0, t, hi)
    step = t - first / np.maximum(second, 1e-300)
    inside = (step > lo) & (step < hi)
    new = np.where(inside, step,
                   np.where(np.isinf(hi), 2 * t, 0.5 * (lo + hi)))
    new = np.where(first == 0, t, new)
    if np.all(np.abs(new - t) <= 1e-12 * np.maximum(t, 1e-12)):
      t = new
      break
    t = new
  return np.where(dd > 0, t, 0.0)


def fit_squared_hinge(x, y, C, *, rows=None,  # pylint: disable=C0103
                      tol: float = 1e-6, max_iter: int = 200,
                      init=None, fit_intercept: bool = True,
                      spectrum: Spectrum | None = None, max_cg: int = 100,
                      block: int | None = None) -> dict[str, Any]:
  """Minimises LinearSVC's one-vs-rest objective with bounded memory.

  A truncated Newton method, as liblinear's primal solver, with an exact
  line search in place of its trust region (as in Keerthi and DeCoste's
  finite Newton method for this loss): the squared hinge makes f_k
  piecewise quadratic, so the step along each class's direction is found
  exactly from margins already at hand. A Newton step costs its conjugate
  gradient passes plus one for the new gradient.

  Args:
    x: features [N, D], float32, an array or a memory map.
    y: integer labels of the rows used.
    C: LinearSVC's C.
    rows: sorted indices of the rows of x to fit on (all when None). Fewer
      than half of x are copied once; more are read in place with the other
      rows weighted 0.
    tol: a class is done when g^T M g / 2, the decrease a Newton step
      would promise from its gradient g (an estimate of how far f_k is above
      its minimum), is at most tol times f_k.
    max_iter: Newton iterations at most.
    init: a previous result's 'theta' to start from (a C path), or None.
    fit_intercept: False for features that already hold the intercept
      (`KernelBasis.z`); 'intercept' is then zeros.
    spectrum: the preconditioner's `Spectrum` of X~^T X~ (`row_spectrum`,
      or `KernelBasis.spectrum`); computed here when None.
    max_cg: conjugate-gradient passes per Newton iteration at most.
    block: leading directions of the spectrum on which each class's
      scaling is a full matrix rather than a diagonal. None: sqrt(2 p), at
      most 256, so that making the matrices costs about one pass (over
      45,000 x 28,672 critic features, 256 took 55 passes at C = 1e-3 from
      zero, 169 took 68 and 64 took 64; over a 4,000-column kernel basis,
      where passes are cheap, 64 fitted a sweep in 2.7 s and 256 in 6.8 s).

  Returns:
    dict with 'coef' [K, D], 'intercept' [K], 'classes' [K], 'theta' (for
    warm starts), 'objective' (sum over classes of f_k), 'objective_per_class',
    'passes' over the data, 'iterations', 'seconds', 'converged'.
  """
  classes = np.unique(y)
  if len(classes) < 3:
    # LinearSVC fits a single classifier for two classes, not two.
    raise ValueError('The lean solver handles three or more classes.')
  start = time.perf_counter()
  problem = _problem(x, y, classes, C, rows, fit_intercept)
  copied = problem.mask is None and rows is not None
  if spectrum is None:
    spectrum = row_spectrum(x, rows, intercept=fit_intercept,
                            all_rows=not copied)
  if spectrum.z.shape[0] != problem.n:
    # z of every row of x or of the fitted rows only: match the problem.
    spectrum = (spectrum.rows(rows) if copied
                else spectrum.scatter(rows, problem.n))
  k = len(classes)
  if block is None:
    block = min(256, int(np.sqrt(2 * problem.p)))
  if init is None:
    # At zero every fitted row is active, with slack 1: no pass needed.
    theta, margins = np.zeros((problem.p, k)), np.zeros((problem.n, k))
  else:
    theta = np.asarray(init, np.float64).reshape(problem.p, k)
    margins = problem.margins(theta)
  slack = problem.slack(margins)
  grad = problem.gradient(theta, slack)
  iterations, done = 0, np.zeros((k,), bool)
  while iterations < max_iter:
    # Only the active rows (positive slack) enter the Hessian.
    active = (slack > 0).astype(np.float32)
    scaling = _Scaling(spectrum, C, active, block)
    value = problem.value_per_class(theta, slack)
    done = 0.5 * scaling.norm2(grad) <= tol * value
    if done.all():
      break
    # Residuals under a tenth of the gradient (in the M-norm), as in
    # liblinear's Newton method (in the Euclidean norm).
    forcing = np.where(done, np.inf, 0.1)
    d, xd = _conjugate_gradients(problem, grad, active, scaling, forcing,
                                 max_cg)
    t = _line_search(problem, theta, d, margins, xd)
    theta = theta + t * d
    margins = margins + t * xd
    slack = problem.slack(margins)
    grad = problem.gradient(theta, slack)
    iterations += 1
    logging.vlog(1, 'lean solver: C=%g, %d iterations, %d passes, f=%.8g, '
                 '%.0f s', C, iterations, problem.passes,
                 problem.value_per_class(theta, slack).sum(),
                 time.perf_counter() - start)
  # The margins were updated along the way; the reported objective is
  # computed afresh from theta (one more pass).
  per_class = problem.value_per_class(theta)
  w, _ = problem._split(theta)  # pylint: disable=protected-access
  seconds = time.perf_counter() - start
  converged = bool(done.all())
  logging.info('lean solver: C=%g, %d iterations, %d passes, %.1f s, %s',
               C, iterations, problem.passes, seconds,
               'converged' if converged else 'NOT converged')
  return dict(coef=w.T.astype(np.float64), intercept=theta[-1].copy()
              if fit_intercept else np.zeros((k,)),
              classes=classes, theta=theta,
              objective=float(per_class.sum()),
              objective_per_class=per_class.tolist(),
              passes=problem.passes, iterations=iterations,
              seconds=seconds, converged=converged)


class KernelBasis:
  """An exact change of variables for fits with fewer rows than dims.

  With the intercept as a constant feature, x~ = (x, 1), the optimal w~ of
  the L2-regularised objective lies in the span of the fitted rows
  (representer theorem). Write K = X~ X~^T = U L U^T and w~ = X~^T U
  L^(-1/2) a: then X~ w~ = Z a with Z = U L^(1/2) and ||w~|| = ||a||, so
  fitting a linear SVM without intercept on the n x r rows of Z minimises
  the same objective as on the n x D rows of x~. For 4,000 x 28,672 that is
  a problem 7 times smaller, and the Gram matrix is computed once for every
  C tried. Directions with eigenvalues under 1e-10 of the largest carry
  nothing the fit can use and are dropped.
  """

  def __init__(self, x, rows):
    self.rows = np.asarray(rows)
    self.x_rows = np.asarray(x[self.rows], np.float32)
    xs = self.x_rows.astype(np.float64)
    gram = xs @ xs.T + 1.0
    del xs
    lam, u = np.linalg.eigh(gram)
    keep = np.flatnonzero(lam > 1e-10 * lam[-1])[::-1]  # Largest first.
    lam, u = lam[keep], u[:, keep]
    self.z = (u * np.sqrt(lam)).astype(np.float32)
    # z's columns are already eigen-directions: z^T z = diag(lam).
    self.spectrum = Spectrum(None, lam, self.z, np.zeros((len(self.z),)))
    self._back = u / np.sqrt(lam)

  def lift(self, coef_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coef [K, D], intercept [K]) on x of weights a [K, r] on z."""
    beta = self._back @ np.asarray(coef_z, np.float64).T  # [n, K]
    coef = (self.x_rows.T @ beta.astype(np.float32)).T
    return coef.astype(np.float64), beta.sum(0)


def ovr_objective(x, y, classes, coef, intercept, C,  # pylint: disable=C0103
                  rows=None) -> np.ndarray:
  """f_k for each class of a fitted (coef [K, D], intercept [K]) model."""
  theta = np.concatenate([coef.T, intercept[None, :]])
  return _problem(x, y, classes, C, rows).value_per_class(theta)


def predict(x, classes, coef, intercept) -> np.ndarray:
  """Labels by the largest one-vs-rest score, as LinearSVC predicts."""
  out = np.empty((x.shape[0],), classes.dtype)
  w = coef.T.astype(np.float32)
  for lo, hi in _chunks(x.shape[0], x.shape[1]):
    scores = np.asarray(x[lo:hi], dtype=np.float32) @ w + intercept
    out[lo:hi] = classes[np.argmax(scores, axis=1)]
  return out

