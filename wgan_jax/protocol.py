"""The DCGAN linear-evaluation protocol on exported CIFAR-10 features.

1. A class-balanced validation split is carved out of the train rows with a
   fixed seed.
2. C is chosen on it from a logarithmic grid (the DCGAN code searched 1e-4 ...
   1e-2); the grid widens while the best C sits on an edge.
3. "All labels": refit on every train row at that C; test accuracy.
4. "400 per class": seeded class-balanced subsets of the train rows outside
   the validation split, C chosen on validation for each; mean and standard
   deviation of the test accuracy over the subsets.

Every fit minimises LinearSVC's objective; `l2svm.choose_solver` picks
liblinear where it fits in the memory budget and the lean solver elsewhere.
"""

import time
from typing import Any

from absl import logging
import numpy as np

from wgan_jax import fileio
from wgan_jax import l2svm

DCGAN_GRID = tuple(float(c) for c in np.logspace(-4, -2, 5))
_WIDEN_LIMIT = 3  # Decades the grid may grow past either edge.


def class_balanced_subset(
    labels: np.ndarray, per_class: int, seed: int
) -> np.ndarray:
  """Draws the same number of rows from every class, without replacement.

  Args:
    labels: int array [N] of class labels.
    per_class: rows to draw from each class present in `labels`.
    seed: seed of the draw; the same seed gives the same rows.

  Returns:
    Sorted int64 row indices, exactly `per_class` per class.

  Raises:
    ValueError: if `per_class` is not positive or a class has fewer rows.
  """
  labels = np.asarray(labels)
  if per_class < 1:
    raise ValueError(f'per_class must be positive, got {per_class}')
  rng = np.random.default_rng(seed)
  chosen = []
  for cls in np.unique(labels):
    rows = np.flatnonzero(labels == cls)
    if rows.size < per_class:
      raise ValueError(
          f'class {cls} has only {rows.size} rows, fewer than the '
          f'{per_class} per class requested'
      )
    chosen.append(rng.choice(rows, size=per_class, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def _fit(x, y, rows, C, solver, init=None,  # pylint: disable=invalid-name
         max_iter=2000):
  """Fits on x[rows] with the named solver; returns (model dict, seconds)."""
  start = time.perf_counter()
  if solver == 'liblinear':
    model = l2svm.fit_linear_svm(np.asarray(x[rows], np.float32), y[rows], C,
                                 max_iter=max_iter)
    fit = dict(coef=model.coef_, intercept=model.intercept_,
               classes=model.classes_, theta=None,
               converged=bool(np.max(model.n_iter_) < max_iter))
  else:
    fit = l2svm.fit_squared_hinge(x, y[rows], C, rows=rows, init=init)
  return fit, time.perf_counter() - start


def _accuracy(fit, x, y, rows=None) -> float:
  xs = x if rows is None else x[rows]
  ys = y if rows is None else y[rows]
  pred = l2svm.predict(xs, fit['classes'], fit['coef'], fit['intercept'])
  return float(np.mean(pred == ys))


def select_c(x, y, train_rows, val_rows, solver, grid=DCGAN_GRID):
  """Fits each C of the grid on train_rows and scores it on val_rows.

  The grid grows by its own step past an edge while the best C is there.

  Returns:
    (best C, {C: validation accuracy}, seconds spent fitting).
  """
  grid = sorted(grid)
  if len(grid) < 2:
    raise ValueError(f'The C grid needs two values or more, got {grid}.')
  step = grid[1] / grid[0]
  scores, seconds, init = {}, 0.0, None
  lo_limit, hi_limit = grid[0] / 10**_WIDEN_LIMIT, grid[-1] * 10**_WIDEN_LIMIT
  todo = list(grid)
  while todo:
    for C in sorted(todo):  # pylint: disable=invalid-name
      # Increasing C with warm starts: each fit starts near its solution.
      fit, t = _fit(x, y, train_rows, C, solver, init)
      init = fit['theta']
      seconds += t
      scores[C] = _accuracy(fit, x, y, val_rows)
      logging.info('C=%g: validation accuracy %.4f (%s, %.1f s)', C,
                   scores[C], solver, t)
    cs = sorted(scores)
    # Ties go to the smaller C (more regularisation). The grid grows only
    # where the edge is strictly best: a flat edge is not a trend.
    best = max(cs, key=lambda c: (scores[c], -c))
    todo = []
    if (best == cs[0] and best / step >= lo_limit
        and scores[cs[0]] > scores[cs[1]]):
      todo, init = [best / step], None
    elif (best == cs[-1] and best * step <= hi_limit
          and scores[cs[-1]] > scores[cs[-2]]):
      todo = [best * step]
  return best, scores, seconds


def run(train_x, train_y, test_x, test_y, *, val_per_class=500,
        subset_per_class=400, num_subsets=10, seed=0,
        memory_budget_gib=16.0, grid=DCGAN_GRID) -> dict[str, Any]:
  """Runs the whole protocol; returns a JSON-serialisable dict."""
  budget = int(memory_budget_gib * 2**30)
  n, d = train_x.shape
  val_rows = class_balanced_subset(train_y, val_per_class, seed)
  rest = np.setdiff1d(np.arange(n), val_rows)
  results = dict(feature_dim=int(d), n_train=int(n), n_test=len(test_y),
                 val_rows=len(val_rows), grid=list(grid))

  # All labels: C on validation, then refit on every train row.
  solver, why = l2svm.choose_solver(len(rest), d, budget)
  logging.info('all labels: %s solver (%s)', solver, why)
  start = time.perf_counter()
  best, scores, _ = select_c(train_x, train_y, rest, val_rows, solver, grid)
  solver_all, why_all = l2svm.choose_solver(n, d, budget)
  fit, refit_seconds = _fit(train_x, train_y, np.arange(n), best, solver_all)
  results['all_labels'] = dict(
      test_accuracy=_accuracy(fit, test_x, test_y), C=best,
      val_accuracy={f'{c:g}': a for c, a in scores.items()},
      solver=solver_all, solver_reason=why_all, rows=int(n),
      refit_seconds=refit_seconds, seconds=time.perf_counter() - start,
      converged=fit['converged'], peak_rss_mib=fileio.peak_rss_mib())

  # Limited labels: seeded subsets outside the validation rows.
  accs, chosen = [], []
  start = time.perf_counter()
  for s in range(num_subsets):
    sub = rest[class_balanced_subset(train_y[rest], subset_per_class,
                                     seed + 1 + s)]
    solver_sub, why_sub = l2svm.choose_solver(len(sub), d, budget)
    c, _, _ = select_c(train_x, train_y, sub, val_rows, solver_sub, grid)
    fit, _ = _fit(train_x, train_y, sub, c, solver_sub)
    accs.append(_accuracy(fit, test_x, test_y))
    chosen.append(c)
    logging.info('subset %d: C=%g, test accuracy %.4f', s, c, accs[-1])
  results['per_class'] = dict(
      per_class=subset_per_class, subsets=num_subsets,
      mean=float(np.mean(accs)), std=float(np.std(accs, ddof=1))
      if len(accs) > 1 else 0.0, accuracies=accs, C=chosen,
      solver=solver_sub, solver_reason=why_sub,
      seconds=time.perf_counter() - start, peak_rss_mib=fileio.peak_rss_mib())
  return results


def markdown_table(results: dict[str, Any], name: str = 'features') -> str:
  """The protocol's results as one markdown table row, with its header."""
  a, p = results['all_labels'], results['per_class']
  cs = ', '.join(f'{c:g}' for c in sorted(set(p['C'])))
  export = results.get('layout', {}).get('splits', {})
  rates = [v['images_per_sec'] for v in export.values()
           if 'images_per_sec' in v]
  rate = f'{np.mean(rates):.0f}' if rates else '-'
  return '\n'.join([
      '| features | dims | all labels | C | 400 per class, mean +- std (n) '
      '| C chosen | solver (all / 400) | fit time (all / 400) | export img/s '
      '| peak RSS |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      f'| {name} | {results["feature_dim"]} | {100 * a["test_accuracy"]:.2f}% '
      f'| {a["C"]:g} | {100 * p["mean"]:.2f} +- {100 * p["std"]:.2f}% '
      f'({p["subsets"]}) | {cs} | {a["solver"]} / {p["solver"]} | '
      f'{a["seconds"]:.0f} s / {p["seconds"]:.0f} s | {rate} | '
      f'{max(a["peak_rss_mib"], p["peak_rss_mib"]) / 1024:.1f} GiB |',
  ])


def compare_solvers(features_dir: str, C: float,  # pylint: disable=C0103
                    per_class: int, seed: int = 0) -> dict[str, Any]:
  """Fits LinearSVC and the lean solver on the same exported rows.

  Returns:
    For each solver: seconds, objective (both evaluated by ovr_objective on
    the same rows) and test accuracy.
  """
  load = lambda name: np.load(f'{features_dir}/{name}.npy', mmap_mode='r')
  x, y = load('train_features'), np.asarray(load('train_labels'))
  tx, ty = load('test_features'), np.asarray(load('test_labels'))
  rows = class_balanced_subset(y, per_class, seed)
  out = {}
  start = time.perf_counter()
  model = l2svm.fit_linear_svm(np.asarray(x[rows]), y[rows], C)
  fits = {'liblinear': (model.coef_, model.intercept_, model.classes_,
                        time.perf_counter() - start)}
  start = time.perf_counter()
  lean = l2svm.fit_squared_hinge(x, y[rows], C, rows=rows)
  fits['lean'] = (lean['coef'], lean['intercept'], lean['classes'],
                  time.perf_counter() - start)
  for name, (coef, bias, classes, seconds) in fits.items():
    out[name] = dict(
        seconds=seconds,
        objective=float(l2svm.ovr_objective(x, y[rows], classes, coef, bias,
                                            C, rows=rows).sum()),
        test_accuracy=float(
            np.mean(l2svm.predict(tx, classes, coef, bias) == ty)))
  out['lean'].update(passes=lean['passes'], converged=lean['converged'])
  out.update(C=C, rows=len(rows), dims=int(x.shape[1]))
  return out


if __name__ == '__main__':
  # python -m wgan_jax.protocol FEATDIR [C] [PER_CLASS]: both solvers.
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  args = sys.argv[1:]
  print(json.dumps(compare_solvers(
      args[0], float(args[1]) if len(args) > 1 else 0.01,
      int(args[2]) if len(args) > 2 else 1000), indent=1))
