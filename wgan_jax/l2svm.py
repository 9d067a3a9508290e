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

import time
from typing import Any
import warnings

from absl import logging
import numpy as np
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


class _Scaling:
  """The preconditioner M ~ H^-1 of the conjugate gradients, per class.

  M = h_t I + V diag(h - h_t) V^T with h = 1 / (1 + 2 C a lam), where V
  holds orthonormal (estimated) eigenvectors of X~^T X~, lam their
  eigenvalues, h_t the same function of the mean eigenvalue of the rest of
  the space (`tail`) and a the class's fraction of active rows: an
  approximate inverse of the Hessian I + 2 C X~^T D X~ (D: active rows).
  V = None means X~^T X~ is diagonal.
  """

  def __init__(self, v, lam, tail, C, k,  # pylint: disable=invalid-name
               active=None):
    self.v = v
    active = np.ones((k,)) if active is None else np.asarray(active)
    inverse = lambda e: 1.0 / (1.0 + 2.0 * C * e * active[None, :])
    self.h = inverse(np.asarray(lam)[:, None])
    self.h_tail = inverse(np.full((1, 1), float(tail)))

  def apply(self, g):
    """M g for g [p, K]."""
    if self.v is None:
      return self.h * g
    # V is float32 (`row_spectrum`): a float64 V would cost about as much
    # per application as a pass over the rows.
    proj = (self.v.T @ g.astype(np.float32)).astype(np.float64)
    return self.h_tail * g + self.v @ ((self.h - self.h_tail) * proj).astype(
        np.float32)

  def norm(self, g):
    """sqrt(g^T M g) per class: about the Newton decrement at gradient g."""
    return np.sqrt(np.sum(g * self.apply(g), 0))


def _with_ones(xc, intercept):
  if not intercept:
    return xc
  return np.concatenate([xc, np.ones((len(xc), 1), np.float32)], axis=1)


def row_spectrum(x, rows=None, *, intercept: bool = True,
                 exact_dims: int = 8192, sample: int = 4000, seed: int = 0):
  """Eigenpairs of X~^T X~ over the rows, and the mean of the rest.

  The preconditioner of `fit_squared_hinge`; it depends on the rows only,
  so one serves every C of a sweep. Exact (one pass and a p x p eigh) up to
  `exact_dims` columns. Above, the eigenpairs come from the subspace that
  `sample` random rows span (Rayleigh-Ritz with every row: one pass with
  `sample` columns), and the rest of the spectrum is summed up by its mean,
  from the trace.

  Args:
    x: features [N, D], an array or a memory map.
    rows: sorted row indices (all when None).
    intercept: whether X~ has the constant column of the intercept.
    exact_dims: the most columns for an exact decomposition.
    sample: rows whose span is used above that.
    seed: seed of the row sample.

  Returns:
    (V [p, r] with orthonormal columns, eigenvalues [r], the mean eigenvalue
    of the orthogonal complement: 0 when r = p).
  """
  rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
  p = x.shape[1] + int(intercept)
  step = max(1, _CHUNK_BYTES // (4 * p))
  if p <= exact_dims:
    gram = np.zeros((p, p))
    for lo in range(0, len(rows), step):
      xc = _with_ones(np.asarray(x[rows[lo:lo + step]], np.float32),
                      intercept)
      gram += xc.T @ xc
    lam, v = np.linalg.eigh(gram)
    keep = lam > 1e-10 * lam[-1]
    # Directions dropped here have (near) zero eigenvalues: tail 0.
    return v[:, keep].astype(np.float32), lam[keep], 0.0
  picked = rows
  if len(rows) > sample:
    picked = np.sort(np.random.default_rng(seed).choice(rows, sample, False))
  # float32 products: a preconditioner needs the spectrum roughly, not
  # exactly, and this halves the cost of the largest ones.
  q = np.linalg.qr(_with_ones(np.asarray(x[picked], np.float32),
                              intercept).T.astype(np.float64))[0]
  q32 = q.astype(np.float32)
  projected = np.zeros((q.shape[1],) * 2)
  trace = 0.0
  for lo in range(0, len(rows), step):
    xc = _with_ones(np.asarray(x[rows[lo:lo + step]], np.float32), intercept)
    xq = xc @ q32
    projected += xq.T @ xq
    trace += float(np.einsum('ij,ij->', xc, xc, dtype=np.float64))
  lam, u = np.linalg.eigh(projected)
  tail = max(trace - lam.sum(), 0.0) / max(p - len(lam), 1)
  # Ritz values near the tail's mean gain nothing over the tail term; they
  # join it, which keeps V (and every application of it) small.
  keep = lam > 2.0 * tail
  tail = max(trace - lam[keep].sum(), 0.0) / (p - keep.sum())
  logging.info('preconditioner: %d of %d eigenpairs, tail mean %.4g, top '
               '%.4g', keep.sum(), len(lam), tail, lam[-1])
  return (q @ u[:, keep]).astype(np.float32), lam[keep], tail


def _conjugate_gradients(problem, grad, active, scaling, forcing,
                         max_steps):
  """Approximately solves H d = -grad per class, preconditioned by M.

  Classes are independent problems that share each pass over the rows;
  each stops once its residual is under `forcing` times its gradient.

  Returns:
    (d [p, K], X~ d [n, K]): the direction and, accumulated from the passes
    already made, its margins (for the line search, at no extra pass).
  """
  d = np.zeros_like(grad)
  xd = np.zeros((problem.n, problem.k))
  r = -grad
  z = scaling.apply(r)
  q, rz = z, np.sum(r * z, 0)
  goal = forcing * np.linalg.norm(grad, axis=0)
  live = np.linalg.norm(r, axis=0) > goal
  for _ in range(max_steps):
    if not live.any():
      break
    xq, hq = problem.hessian_product(q, active)
    alpha = np.where(live, rz / np.maximum(np.sum(q * hq, 0), 1e-300), 0.0)
    d += alpha * q
    xd += alpha * xq
    r -= alpha * hq
    live &= np.linalg.norm(r, axis=0) > goal
    z = scaling.apply(r)
    rz_new = np.sum(r * z, 0)
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
                      tol: float = 1e-4, max_iter: int = 200,
                      init=None, fit_intercept: bool = True,
                      spectrum=None, max_cg: int = 100) -> dict[str, Any]:
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
    tol: a class is done when its preconditioned gradient norm
      sqrt(g^T M g) (about the Newton decrement) falls under tol times its
      value at zero.
    max_iter: Newton iterations at most.
    init: a previous result's 'theta' to start from (a C path), or None.
    fit_intercept: False for features that already hold the intercept
      (`KernelBasis.z`); 'intercept' is then zeros.
    spectrum: (V, eigenvalues, tail) of X~^T X~ from `row_spectrum`, or
      (None, diagonal, 0) when it is diagonal (`KernelBasis.spectrum`);
      computed here when None.
    max_cg: conjugate-gradient passes per Newton iteration at most.

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
  if spectrum is None:
    spectrum = row_spectrum(x, rows, intercept=fit_intercept)
  k = len(classes)
  fitted_rows = problem.n if problem.mask is None else problem.mask.sum()
  zero, margins0 = np.zeros((problem.p, k)), np.zeros((problem.n, k))
  # At zero every fitted row is active, with slack 1.
  ones = problem.slack(margins0)
  grad0 = problem.gradient(zero, ones)
  scale0 = _Scaling(*spectrum, C, k).norm(grad0)
  if init is None:
    theta, margins, slack, grad = zero, margins0, ones, grad0
  else:
    theta = np.asarray(init, np.float64).reshape(problem.p, k)
    margins = problem.margins(theta)
    slack = problem.slack(margins)
    grad = problem.gradient(theta, slack)
  iterations, done = 0, np.zeros((k,), bool)
  while iterations < max_iter:
    # Only the active rows (positive slack) enter the Hessian; their
    # fraction sets each class's scaling, renewed every step.
    active = (slack > 0).astype(np.float32)
    scaling = _Scaling(*spectrum, C, k, active=active.sum(0) / fitted_rows)
    done = scaling.norm(grad) <= tol * scale0
    if done.all():
      break
    # Residuals under a tenth of the gradient, as in liblinear's Newton
    # method. (Tightening them near the optimum, as sqrt(decrement), took
    # about as many passes on 28,672-dim critic features.)
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
    keep = lam > 1e-10 * lam[-1]
    lam, u = lam[keep], u[:, keep]
    self.z = (u * np.sqrt(lam)).astype(np.float32)
    self.spectrum = (None, lam, 0.0)  # z^T z = diag(lam).
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

