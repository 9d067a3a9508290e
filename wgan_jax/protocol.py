"""The DCGAN linear-evaluation protocol on exported CIFAR-10 features.

1. A class-balanced validation split is carved out of the train rows with a
   fixed seed.
2. C is chosen on it from a logarithmic grid (the DCGAN code searched 1e-4 ...
   1e-2); the grid widens while the best C sits on an edge, and the sweep
   stops once two values above the best have scored no better.
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
PARTS = ('all_labels', 'per_class')
# Grid values above the best that must score no better before the larger
# ones are skipped (`select_c`).
PATIENCE = 2
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
         basis=None, max_iter=2000, spectrum=None):
  """Fits on x[rows] with the named solver; returns (model dict, seconds).

  With a `l2svm.KernelBasis` of those rows the solver sees its z instead of
  x (the same objective, fewer columns) and the weights are lifted back.
  `spectrum` is the lean solver's preconditioner (`l2svm.row_spectrum`).
  """
  start = time.perf_counter()
  ys = y[rows]
  if basis is not None:
    xs, fit_rows, intercept = basis.z, None, False
  else:
    xs, fit_rows, intercept = x, rows, True
  if solver == 'liblinear':
    data = xs if fit_rows is None else xs[fit_rows]
    model = l2svm.fit_linear_svm(np.asarray(data, np.float32), ys, C,
                                 max_iter=max_iter, fit_intercept=intercept)
    fit = dict(coef=model.coef_, classes=model.classes_, theta=None,
               intercept=np.broadcast_to(model.intercept_,
                                         (len(model.classes_),)),
               converged=bool(np.max(model.n_iter_) < max_iter))
  else:
    fit = l2svm.fit_squared_hinge(
        xs, ys, C, rows=fit_rows, init=init, fit_intercept=intercept,
        spectrum=basis.spectrum if basis is not None else spectrum)
  if basis is not None:
    fit['coef'], fit['intercept'] = basis.lift(fit['coef'])
  return fit, time.perf_counter() - start


def _accuracy(fit, x, y) -> float:
  pred = l2svm.predict(x, fit['classes'], fit['coef'], fit['intercept'])
  return float(np.mean(pred == y))


def select_c(x, y, train_rows, val, solver, grid=DCGAN_GRID,
             basis=None, spectrum=None, patience=PATIENCE):
  """Fits each C of the grid on train_rows and scores it on val.

  `val` is (features, labels) of the validation rows, gathered once by the
  caller: every C and every subset is scored on them.

  The grid grows by its own step past an edge while the best C is there.
  C goes up: once `patience` values in a row above the best so far have
  scored no better, the larger ones are skipped. (Validation accuracy
  rose, peaked and fell with C on every feature set measured here, and the
  largest C are the slowest fits.) None fits the whole grid.

  Returns:
    (best C, {C: validation accuracy}, seconds spent fitting, the fit at
    the best C). Skipped values have no score.
  """
  grid = sorted(grid)
  if len(grid) < 2:
    raise ValueError(f'The C grid needs two values or more, got {grid}.')
  step = grid[1] / grid[0]
  scores, fits, seconds, init = {}, {}, 0.0, None
  lo_limit, hi_limit = grid[0] / 10**_WIDEN_LIMIT, grid[-1] * 10**_WIDEN_LIMIT
  todo = list(grid)
  while todo:
    for C in sorted(todo):  # pylint: disable=invalid-name
      if scores and patience is not None:
        best = max(scores, key=lambda c: (scores[c], -c))
        if C > best and sum(c > best for c in scores) >= patience:
          logging.info('C=%g skipped: validation accuracy fell at the %d '
                       'values above C=%g', C, patience, best)
          continue
      # Increasing C with warm starts: each fit starts near its solution.
      fit, t = _fit(x, y, train_rows, C, solver, init, basis,
                    spectrum=spectrum)
      init = fit['theta']
      seconds += t
      scores[C], fits[C] = _accuracy(fit, *val), fit
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
  return best, scores, seconds, fits[best]


def _plan(x, rows, budget, solver='auto'):
  """The basis (or None), solver and reason for a fit on x[rows].

  Fewer rows than dims: the fit runs on `l2svm.KernelBasis` (exact, and
  cheaper for either solver). `solver='auto'` takes LinearSVC where its
  estimated memory fits the budget; a named solver is used as asked, except
  that liblinear is refused where its int32 counters would overflow.
  """
  n, d = len(rows), x.shape[1]
  basis = l2svm.KernelBasis(x, rows) if n < d + 1 else None
  dims = d if basis is None else basis.z.shape[1]
  chosen, why = l2svm.choose_solver(n, dims, budget)
  if basis is not None:
    why += f'; fit on a {n} x {dims} kernel basis of the {d} dims'
  if solver == 'auto' or solver == chosen:
    return basis, chosen, why
  if solver == 'liblinear' and n * (dims + 2) > l2svm.LIBLINEAR_MAX_ENTRIES:
    raise ValueError(f'LinearSVC cannot fit {n:,} x {dims:,}: {why}. Use '
                     '--solver=lean or --solver=auto.')
  return basis, solver, f'--solver={solver}; auto would take {chosen}: {why}'


def run(train_x, train_y, test_x, test_y, *, val_per_class=500,
        subset_per_class=400, num_subsets=10, seed=0,
        memory_budget_gib=16.0, grid=DCGAN_GRID,
        solver='auto', parts=PARTS,
        patience=PATIENCE, on_part=None) -> dict[str, Any]:
  """Runs the protocol's parts; returns a JSON-serialisable dict.

  `parts` names which of 'all_labels' and 'per_class' to run; both by
  default. The validation split is the same either way. `patience` is
  `select_c`'s (None: every C of the grid). `on_part(results)` is called
  after each part, so that a caller can save what is done so far.
  """
  unknown = set(parts) - set(PARTS)
  if unknown or not parts:
    raise ValueError(f'Unknown protocol parts {sorted(unknown)}; name one '
                     f'or both of {PARTS}.')
  budget = int(memory_budget_gib * 2**30)
  n, d = train_x.shape
  # Every class must keep rows outside the validation split: a class left
  # with none would drop out of every fit without a word.
  counts = np.unique(train_y, return_counts=True)[1]
  if counts.min() <= val_per_class:
    raise ValueError(
        f'A class has only {counts.min()} train rows, and the validation '
        f'split takes val_per_class={val_per_class} of each, leaving none '
        'or too few to fit on; export more train rows or lower '
        '--val_per_class.')
  val_rows = class_balanced_subset(train_y, val_per_class, seed)
  rest = np.setdiff1d(np.arange(n), val_rows)
  if 'per_class' in parts:
    # Checked now rather than after the all-labels part has run for minutes.
    left = counts.min() - val_per_class
    if left < subset_per_class:
      raise ValueError(
          f'A class has only {left} train rows outside the '
          f'{val_per_class}-per-class validation split, fewer than the '
          f'subsets take (subset_per_class={subset_per_class}); export more '
          'train rows, lower --subset_per_class or --val_per_class, or run '
          '--parts=all_labels.')
  results = dict(feature_dim=int(d), n_train=int(n), n_test=len(test_y),
                 val_rows=len(val_rows), val_per_class=val_per_class,
                 seed=seed, grid=list(grid), patience=patience)
  # One gather of the validation rows from the memory map, not one per C.
  val = (np.asarray(train_x[val_rows], np.float32), train_y[val_rows])
  if 'all_labels' in parts:
    results['all_labels'] = _all_labels(train_x, train_y, test_x, test_y,
                                        val, rest, budget, grid, solver,
                                        patience)
    logging.info('all labels: test accuracy %.4f at C=%g',
                 results['all_labels']['test_accuracy'],
                 results['all_labels']['C'])
    if on_part:
      on_part(results)
  if 'per_class' in parts:
    results['per_class'] = _per_class(train_x, train_y, test_x, test_y,
                                      val, rest, budget, grid, solver,
                                      subset_per_class, num_subsets, seed,
                                      patience)
    if on_part:
      on_part(results)
  return results


def _all_labels(train_x, train_y, test_x, test_y, val, rest, budget,
                grid, solver, patience):
  """C on the validation rows, then a refit on every train row."""
  n = train_x.shape[0]
  start = time.perf_counter()
  basis, solver_c, why = _plan(train_x, rest, budget, solver)
  logging.info('all labels, C sweep: %s solver (%s)', solver_c, why)
  # One preconditioner for the whole sweep and the refit: the refit's rows
  # are these plus the validation rows, close enough to precondition.
  spectrum = (l2svm.row_spectrum(train_x, rest)
              if basis is None and solver_c == 'lean' else None)
  best, scores, sweep_seconds, best_fit = select_c(
      train_x, train_y, rest, val, solver_c, grid, basis, spectrum,
      patience)
  del basis
  every = np.arange(n)
  basis, solver_all, why_all = _plan(train_x, every, budget, solver)
  logging.info('all labels, refit: %s solver (%s)', solver_all, why_all)
  # The refit starts from the sweep's solution at that C: 90% of its rows.
  init = best_fit['theta'] if basis is None and solver_c == 'lean' else None
  fit, refit_seconds = _fit(train_x, train_y, every, best, solver_all,
                            init=init, basis=basis, spectrum=spectrum)
  del basis, spectrum
  return dict(
      test_accuracy=_accuracy(fit, test_x, test_y), C=best,
      val_accuracy={f'{c:g}': a for c, a in scores.items()},
      solver=solver_all, solver_reason=why_all, sweep_solver=solver_c,
      rows=int(n), sweep_seconds=sweep_seconds, refit_seconds=refit_seconds,
      seconds=time.perf_counter() - start,
      converged=fit['converged'], peak_rss_mib=fileio.peak_rss_mib())


def _per_class(train_x, train_y, test_x, test_y, val, rest, budget,
               grid, solver, subset_per_class, num_subsets, seed, patience):
  """Seeded class-balanced subsets, C chosen on validation for each."""
  accs, chosen = [], []
  start = time.perf_counter()
  for s in range(num_subsets):
    sub = rest[class_balanced_subset(train_y[rest], subset_per_class,
                                     seed + 1 + s)]
    basis, solver_sub, why_sub = _plan(train_x, sub, budget, solver)
    # Once per subset, not once per C.
    spectrum = (l2svm.row_spectrum(train_x, sub, all_rows=False)
                if basis is None and solver_sub == 'lean' else None)
    c, _, t, fit = select_c(train_x, train_y, sub, val, solver_sub,
                            grid, basis, spectrum, patience)
    accs.append(_accuracy(fit, test_x, test_y))
    chosen.append(c)
    logging.info('subset %d: C=%g, test accuracy %.4f (%s, %.1f s)', s, c,
                 accs[-1], solver_sub, t)
  return dict(
      per_class=subset_per_class, subsets=num_subsets,
      mean=float(np.mean(accs)), std=float(np.std(accs, ddof=1))
      if len(accs) > 1 else 0.0, accuracies=accs, C=chosen,
      solver=solver_sub, solver_reason=why_sub,
      seconds=time.perf_counter() - start, peak_rss_mib=fileio.peak_rss_mib())


def markdown_table(named_results) -> str:
  """The protocol's results as a markdown table, one row per feature set.

  Args:
    named_results: (name, results of `run`) pairs. A part a run left out
      (`run(parts=...)`) shows as '-'.

  Returns:
    The table, header included, without a final newline.
  """
  sizes = {r['per_class']['per_class'] for _, r in named_results
           if r.get('per_class')}
  # The subsets' rows per class, 400 in the DCGAN protocol; where the rows
  # differ, each cell says its own.
  k = str(next(iter(sizes))) if len(sizes) == 1 else 'k'
  lines = [
      f'| features | dims | train rows | all labels | C | {k} per class, '
      f'mean +- std (n) | C chosen | solver (all / {k}) | fit time (all / '
      f'{k}) | export img/s | peak RSS |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for name, results in named_results:
    a, p = results.get('all_labels'), results.get('per_class')
    export = results.get('layout', {}).get('splits', {})
    rates = [v['images_per_sec'] for v in export.values()
             if 'images_per_sec' in v]
    rate = f'{np.mean(rates):.0f}' if rates else '-'
    cells = dict(all='-', c='-', sub='-', cs='-', solver_all='-',
                 solver_sub='-', time_all='-', time_sub='-')
    if a:
      cells.update(all=f'{100 * a["test_accuracy"]:.2f}%', c=f'{a["C"]:g}',
                   solver_all=a['solver'], time_all=f'{a["seconds"]:.0f} s')
    if p:
      n = str(p['subsets'])
      if len(sizes) > 1:
        n += f' x {p["per_class"]}'
      cells.update(
          sub=f'{100 * p["mean"]:.2f} +- {100 * p["std"]:.2f}% ({n})',
          cs=', '.join(f'{c:g}' for c in sorted(set(p['C']))),
          solver_sub=p['solver'], time_sub=f'{p["seconds"]:.0f} s')
    rss = max(part['peak_rss_mib'] for part in (a, p) if part) / 1024
    lines.append(
        f'| {name} | {results["feature_dim"]:,} | {results["n_train"]:,} '
        f'| {cells["all"]} | {cells["c"]} | {cells["sub"]} | {cells["cs"]} '
        f'| {cells["solver_all"]} / {cells["solver_sub"]} '
        f'| {cells["time_all"]} / {cells["time_sub"]} | {rate} '
        f'| {rss:.1f} GiB |')
  return '\n'.join(lines)


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


def time_sweep_fit(features_dir: str, C: float,  # pylint: disable=C0103
                   val_per_class: int = 500, seed: int = 0) -> dict[str, Any]:
  """One lean fit of the all-labels sweep at C, from zero, timed.

  The rows and the preconditioner are those of `run` (the train rows
  outside its validation split); a benchmark of the solver on the
  protocol's largest fits.

  Returns:
    Seconds for the preconditioner and the fit, passes, Newton iterations,
    objective, convergence and validation accuracy.
  """
  load = lambda name: np.load(f'{features_dir}/{name}.npy', mmap_mode='r')
  x, y = load('train_features'), np.asarray(load('train_labels'))
  val_rows = class_balanced_subset(y, val_per_class, seed)
  rest = np.setdiff1d(np.arange(len(y)), val_rows)
  start = time.perf_counter()
  spectrum = l2svm.row_spectrum(x, rest)
  spectrum_seconds = time.perf_counter() - start
  fit = l2svm.fit_squared_hinge(x, y[rest], C, rows=rest, spectrum=spectrum)
  return dict(C=C, rows=len(rest), dims=int(x.shape[1]),
              spectrum_seconds=spectrum_seconds, seconds=fit['seconds'],
              passes=fit['passes'], iterations=fit['iterations'],
              objective=fit['objective'], converged=fit['converged'],
              val_accuracy=_accuracy(fit, x[val_rows], y[val_rows]),
              peak_rss_mib=fileio.peak_rss_mib())


if __name__ == '__main__':
  # python -m wgan_jax.protocol FEATDIR [C] [PER_CLASS]: both solvers;
  # python -m wgan_jax.protocol FEATDIR C sweep: one timed sweep fit.
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  args = sys.argv[1:]
  logging.set_verbosity(logging.INFO)
  if len(args) == 3 and args[2] == 'sweep':
    print(json.dumps(time_sweep_fit(args[0], float(args[1])), indent=1))
  else:
    print(json.dumps(compare_solvers(
        args[0], float(args[1]) if len(args) > 1 else 0.01,
        int(args[2]) if len(args) > 2 else 1000), indent=1))
