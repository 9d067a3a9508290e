"""Linear-SVM evaluation of exported critic features (the DCGAN protocol).

Usage:

  python -m wgan_jax.linear_eval --features=FEATDIR \
      [--train_per_class=K] [--C=0.01] [--seed=0] [--max_iter=2000] \
      [--out=PATH]
  python -m wgan_jax.linear_eval --features=FEATDIR --protocol=dcgan \
      [--parts=both|all_labels|per_class] [--solver=auto|lean|liblinear]
  python -m wgan_jax.linear_eval --report=FEATDIR1,FEATDIR2,... [--out=MD]

FEATDIR is written by `python -m wgan_jax.export`. Flags are spelled with
underscores, as absl requires; the dashed spellings (`--train-per-class`,
`--max-iter`) are rewritten to them before parsing, for convenience.
"""

import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import sklearn

from wgan_jax import fileio
from wgan_jax import l2svm
from wgan_jax import protocol

DEFAULT_C = 0.01
DEFAULT_MAX_ITER = 2000
RESULTS_FILENAME = 'results.json'
# The protocol's own file, so a later single fit cannot overwrite it.
PROTOCOL_FILENAME = 'protocol_results.json'
_FEATURE_FILES = (
    'train_features.npy',
    'train_labels.npy',
    'test_features.npy',
    'test_labels.npy',
    'layout.json',
)


def _check_features_dir(features_dir: str) -> None:
  """Raises FileNotFoundError unless every exported file is present."""
  hint = 'run `python -m wgan_jax.export` first to write it'
  if not os.path.isdir(features_dir):
    raise FileNotFoundError(
        f'features directory {features_dir} does not exist; {hint}'
    )
  for name in _FEATURE_FILES:
    path = os.path.join(features_dir, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'missing feature file {path}; {hint}')


def _read_layout(features_dir: str) -> dict[str, Any]:
  """layout.json, checked to describe both splits of one export."""
  path = os.path.join(features_dir, 'layout.json')
  with open(path, encoding='utf-8') as f:
    layout = json.load(f)
  missing = {'train', 'test'} - set(layout.get('splits', {}))
  if missing:
    raise ValueError(
        f'{path} does not list the {" and ".join(sorted(missing))} split(s): '
        'the feature files may come from different exports. Export train '
        'and test together into a fresh folder.')
  return layout


def _load_split(
    features_dir: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Memory-maps one split's features and loads its labels."""
  features_path = os.path.join(features_dir, f'{split}_features.npy')
  labels_path = os.path.join(features_dir, f'{split}_labels.npy')
  try:
    features = np.load(features_path, mmap_mode='r')
    labels = np.load(labels_path)
  except (ValueError, OSError, EOFError) as e:
    # A truncated or foreign file: numpy's own message names neither.
    raise ValueError(
        f'Cannot read the {split} split of {features_dir} ({e}); export '
        'again (python -m wgan_jax.export ... --overwrite).') from e
  if features.ndim != 2:
    raise ValueError(
        f'{features_path} should be [N, D], got shape {features.shape}'
    )
  if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
    raise ValueError(
        f'{features_path} has {features.shape[0]} rows but {labels_path} '
        f'has shape {labels.shape}; they must match row for row'
    )
  _check_finite(features, features_path)
  return features, labels


def _check_finite(features: np.ndarray, path: str) -> None:
  """Raises ValueError at the first row holding NaN or inf.

  The export refuses non-finite features, so these come from a file
  changed since; the lean solver would fit them without a word (LinearSVC
  refuses them). One pass in 64 MiB blocks: seconds for 5.7 GB.
  """
  step = max(1, (64 << 20) // (4 * features.shape[1]))
  for start in range(0, features.shape[0], step):
    finite = np.isfinite(features[start:start + step]).all(axis=1)
    if not finite.all():
      raise ValueError(
          f'{path} row {start + int(np.argmin(finite))} holds NaN or inf; '
          'the export writes none, so the file has changed since: export '
          'again (python -m wgan_jax.export ... --overwrite).')


def evaluate(
    features_dir: str | os.PathLike[str],
    train_per_class: int | None = None,
    C: float = DEFAULT_C,  # pylint: disable=invalid-name
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
) -> dict[str, Any]:
  """Trains a linear SVM on exported train features and scores the test set.

  Args:
    features_dir: directory written by `python -m wgan_jax.export`.
    train_per_class: if set, train on this many rows per class drawn with
      `seed` (400 in the DCGAN limited-label protocol); else on all rows.
    C: inverse regularisation strength of the SVM.
    seed: seed of the class-balanced draw and of liblinear.
    max_iter: iteration cap of liblinear.

  Returns:
    A JSON-serialisable dict of the test accuracy (a fraction), settings,
    sizes, fit time, peak memory, convergence and the export's layout.

  Raises:
    FileNotFoundError: if `features_dir` or one of its files is missing.
    ValueError: if features and labels disagree in row count.
  """
  features_dir = os.fspath(features_dir)
  _check_features_dir(features_dir)
  train_x, train_y = _load_split(features_dir, 'train')
  test_x, test_y = _load_split(features_dir, 'test')
  if train_x.shape[1] != test_x.shape[1]:
    raise ValueError(
        f'train features have {train_x.shape[1]} dims but test features '
        f'have {test_x.shape[1]}'
    )
  layout = _read_layout(features_dir)

  if train_per_class is not None:
    try:
      rows = protocol.class_balanced_subset(train_y, train_per_class, seed)
    except ValueError as e:
      raise ValueError(
          f'train_per_class={train_per_class}: {e}; lower --train_per_class '
          'or export more train rows.') from e
    # Fancy indexing reads just the chosen rows from the memory map.
    train_x, train_y = train_x[rows], train_y[rows]
  logging.info(
      'Fitting LinearSVC(C=%g) on %d rows x %d dims',
      C,
      train_x.shape[0],
      train_x.shape[1],
  )
  start = time.perf_counter()
  model = l2svm.fit_linear_svm(train_x, train_y, C, max_iter=max_iter,
                               seed=seed)
  fit_seconds = time.perf_counter() - start
  n_iter = int(np.max(model.n_iter_))
  # Chunked, so a large memory-mapped test set is never copied whole.
  accuracy = float(np.mean(l2svm.predict(test_x, model.classes_, model.coef_,
                                         model.intercept_) == test_y))
  return {
      'test_accuracy': accuracy,
      'C': float(C),
      'n_train': int(train_x.shape[0]),
      'n_test': int(test_x.shape[0]),
      'feature_dim': int(train_x.shape[1]),
      'n_classes': int(np.unique(train_y).size),
      'train_per_class': (
          None if train_per_class is None else int(train_per_class)
      ),
      'seed': int(seed),
      'max_iter': int(max_iter),
      'n_iter': n_iter,
      'converged': n_iter < max_iter,
      'fit_seconds': fit_seconds,
      'peak_rss_mib': fileio.peak_rss_mib(),
      'layout': layout,
      'sklearn_version': sklearn.__version__,
      'features_dir': os.path.abspath(features_dir),
  }


def summary_line(results: dict[str, Any]) -> str:
  """Formats evaluate()'s results as the one-line summary main prints."""
  line = (
      f'test accuracy {100 * results["test_accuracy"]:.2f}% '
      f'(C={results["C"]:g}, {results["n_train"]} train rows x '
      f'{results["feature_dim"]} dims, fit {results["fit_seconds"]:.1f} s, '
      f'peak RSS {results["peak_rss_mib"]:.0f} MiB)'
  )
  if not results['converged']:
    line += ' [LinearSVC did not converge]'
  return line


def _define_flags() -> None:
  """Defines the CLI flags.

  Done only when run as a program so that importing this module next to
  others that define e.g. --seed raises no DuplicateFlagError.
  """
  flags.DEFINE_string(
      'features', None, 'Directory written by `python -m wgan_jax.export`.'
  )
  flags.DEFINE_integer(
      'train_per_class',
      None,
      'Train on this many rows per class (also --train-per-class); '
      'default: all train rows.',
      lower_bound=1,
  )
  flags.DEFINE_float('C', DEFAULT_C, 'Inverse regularisation strength.')
  flags.DEFINE_integer('seed', 0, 'Seed of the subset draw and of liblinear.')
  flags.DEFINE_integer(
      'max_iter',
      DEFAULT_MAX_ITER,
      'Iteration cap of liblinear (also --max-iter).',
      lower_bound=1,
  )
  flags.DEFINE_string(
      'out', None, f'Results JSON path; default: FEATDIR/{RESULTS_FILENAME} '
      f'(single) or FEATDIR/{PROTOCOL_FILENAME} (dcgan, with a .md table).'
  )
  flags.DEFINE_enum(
      'protocol', 'single', ['single', 'dcgan'],
      'single: one fit at --C; dcgan: C chosen on a validation split, all '
      'labels and seeded 400-per-class subsets (see wgan_jax/protocol.py).')
  flags.DEFINE_integer('subsets', 10, 'dcgan: number of 400-per-class draws.',
                       lower_bound=1)
  flags.DEFINE_integer('subset_per_class', 400,
                       'dcgan: rows per class of each limited-label draw.',
                       lower_bound=1)
  flags.DEFINE_integer('val_per_class', 500,
                       'dcgan: rows per class of the validation split that '
                       'chooses C.', lower_bound=1)
  flags.DEFINE_enum(
      'parts', 'both', ['both', *protocol.PARTS],
      'dcgan: run both parts, or only all_labels or per_class (the '
      '400-per-class subsets).')
  flags.DEFINE_enum(
      'solver', 'auto', ['auto', 'liblinear', 'lean'],
      'dcgan: auto takes LinearSVC where it fits --memory_budget_gib and '
      'the lean solver elsewhere; liblinear or lean force one.')
  flags.DEFINE_integer(
      'patience', protocol.PATIENCE,
      'dcgan: skip the larger C of the sweep once this many values above '
      'the best so far scored no better on validation; 0 fits every C.',
      lower_bound=0)
  flags.DEFINE_float('memory_budget_gib', 16.0,
                     'LinearSVC runs only where its estimated peak memory '
                     'fits: dcgan takes the lean solver elsewhere, single '
                     'refuses.')
  positive = lambda v: v is None or (np.isfinite(v) and v > 0)
  flags.register_validator('C', positive, '--C must be a positive number.')
  flags.register_validator('memory_budget_gib', positive,
                           '--memory_budget_gib must be a positive number.')
  flags.DEFINE_list(
      'report', None,
      'Instead of evaluating: one markdown table of the dcgan protocol '
      'results of these feature folders (or results files), written to '
      '--out if given.')


def _undash_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
  """Rewrites `--flag-name[=v]` to `--flag_name[=v]` for the given flags."""
  rewritten = list(argv[:1])
  for i, arg in enumerate(argv[1:], start=1):
    if arg == '--':
      # Everything after '--' is positional; leave it alone.
      rewritten.extend(argv[i:])
      break
    if arg.startswith('--'):
      name, sep, value = arg[2:].partition('=')
      undashed = name.replace('-', '_')
      if undashed in names:
        arg = f'--{undashed}{sep}{value}'
    rewritten.append(arg)
  return rewritten


# Flags that only one --protocol reads; given to the other, they would be
# ignored without a word.
_SINGLE_FLAGS = ('C', 'train_per_class', 'max_iter')
_DCGAN_FLAGS = ('subsets', 'subset_per_class', 'val_per_class', 'parts',
                'solver', 'patience')


def _given(flag_values, names: Sequence[str]) -> list[str]:
  """'--name' for each of `names` given on the command line."""
  return [f'--{name}' for name in names if flag_values[name].present]


def _refuse_flags_of_the_other_protocol(flag_values) -> None:
  """Raises app.UsageError for a flag the chosen protocol would ignore."""
  dcgan = flag_values.protocol == 'dcgan'
  ignored = _given(flag_values, _SINGLE_FLAGS if dcgan else _DCGAN_FLAGS)
  if ignored:
    reason = ('chooses C on validation and fits every part itself' if dcgan
              else 'is one LinearSVC fit')
    raise app.UsageError(
        f'{", ".join(ignored)} {"has" if len(ignored) == 1 else "have"} '
        f'no effect with --protocol='
        f'{flag_values.protocol}, which {reason}; drop it, or use '
        f'--protocol={"single" if dcgan else "dcgan"}.')


def _check_single_fit_memory(flag_values) -> None:
  """Refuses a single LinearSVC fit that would not fit the memory budget."""
  _check_features_dir(flag_values.features)
  x = np.load(os.path.join(flag_values.features, 'train_features.npy'),
              mmap_mode='r')
  rows = x.shape[0]
  if flag_values.train_per_class is not None:
    labels = np.load(os.path.join(flag_values.features, 'train_labels.npy'),
                     mmap_mode='r')
    rows = min(rows, flag_values.train_per_class * len(np.unique(labels)))
  budget = int(flag_values.memory_budget_gib * 2**30)
  solver, why = l2svm.choose_solver(rows, x.shape[1], budget)
  if solver != 'liblinear':
    raise app.UsageError(
        f'A single LinearSVC fit on {rows:,} x {x.shape[1]:,} features: '
        f'{why}. Use --protocol=dcgan (its lean solver fits any size), '
        'fewer rows (--train_per_class) or a larger --memory_budget_gib.')


def main(argv: Sequence[str]) -> None:
  """Evaluates the features named by the flags and writes results.json.

  Args:
    argv: command-line arguments left after flag parsing; must be empty.
  """
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  flag_values = flags.FLAGS
  if flag_values.report:
    ignored = _given(flag_values, ('protocol', 'seed', 'memory_budget_gib',
                                   *_SINGLE_FLAGS, *_DCGAN_FLAGS))
    if flag_values.features:
      raise app.UsageError('Give --features (to evaluate) or --report (to '
                           'tabulate evaluated folders), not both.')
    if ignored:
      raise app.UsageError(
          f'--report tabulates results already written and ignores '
          f'{", ".join(ignored)}; drop '
          f'{"it" if len(ignored) == 1 else "them"}.')
    _write_report(flag_values.report, flag_values.out)
    return
  if not flag_values.features:
    raise app.UsageError('--features is required: a folder written by '
                         '`python -m wgan_jax.export`.')
  _refuse_flags_of_the_other_protocol(flag_values)
  if flag_values.protocol == 'dcgan':
    _run_dcgan_protocol(flag_values)
    return
  _check_single_fit_memory(flag_values)
  results = evaluate(
      flag_values.features,
      train_per_class=flag_values.train_per_class,
      C=flag_values.C,
      seed=flag_values.seed,
      max_iter=flag_values.max_iter,
  )
  out = flag_values.out or os.path.join(flag_values.features, RESULTS_FILENAME)
  fileio.atomic_write_json(out, results)
  logging.info('Wrote %s', out)
  print(summary_line(results), flush=True)


def _feature_set_name(results: dict[str, Any],
                      folder: str | None = None) -> str:
  """'folder (source, step N)': the features' folder, as given or recorded.

  Args:
    results: protocol results.
    folder: the folder they were read from, which names them (a copied or
      renamed folder keeps its recorded features_dir); None: the recorded.
  """
  layout = results.get('layout', {})
  folder = folder or results.get('features_dir', '?')
  name = os.path.basename(os.path.normpath(folder))
  what = layout.get('source', 'features')
  if layout.get('step') is not None:
    what += f', step {layout["step"]}'
  return f'{name} ({what})'


def _run_dcgan_protocol(flag_values) -> None:
  """The full protocol; writes protocol_results.json and .md.

  Both are written after each part (with `finished` false until the last),
  so an interrupted run keeps the parts it finished; `--parts` runs one
  part and keeps the other's earlier results (see `_earlier_parts`).
  """
  features_dir = flag_values.features
  _check_features_dir(features_dir)
  train_x, train_y = _load_split(features_dir, 'train')
  test_x, test_y = _load_split(features_dir, 'test')
  layout = _read_layout(features_dir)
  out = flag_values.out or os.path.join(features_dir, PROTOCOL_FILENAME)
  parts = (protocol.PARTS if flag_values.parts == 'both'
           else (flag_values.parts,))
  extra = dict(_earlier_parts(out, layout, flag_values, parts),
               layout=layout, protocol='dcgan',
               features_dir=os.path.abspath(features_dir),
               sklearn_version=sklearn.__version__)

  def save(results, finished=False):
    results = dict(results, **extra, finished=finished)
    fileio.atomic_write_json(out, results)
    table = protocol.markdown_table([(_feature_set_name(results), results)])
    fileio.atomic_write_text(os.path.splitext(out)[0] + '.md', table + '\n')
    logging.info('Wrote %s and its table (%s)', out,
                 'finished' if finished else 'parts done so far')
    return table

  results = protocol.run(train_x, train_y, test_x, test_y,
                         val_per_class=flag_values.val_per_class,
                         subset_per_class=flag_values.subset_per_class,
                         num_subsets=flag_values.subsets,
                         seed=flag_values.seed,
                         memory_budget_gib=flag_values.memory_budget_gib,
                         solver=flag_values.solver,
                         patience=flag_values.patience or None,
                         parts=parts, on_part=save)
  print(save(results, finished=True), flush=True)


def _earlier_parts(out: str, layout: dict[str, Any], flag_values,
                   parts: Sequence[str]) -> dict[str, Any]:
  """The other part's results in `out`, when they belong with this run.

  They do when `out` came from the same export (layout), validation split
  and seed; a run of one part then completes the file rather than replacing
  the other part, which may have taken many minutes.
  """
  if len(parts) == len(protocol.PARTS) or not os.path.isfile(out):
    return {}
  with open(out, encoding='utf-8') as f:
    earlier = json.load(f)
  if (earlier.get('layout') != layout or earlier.get('seed') !=
      flag_values.seed or earlier.get('val_per_class') !=
      flag_values.val_per_class):
    logging.warning('%s holds results of another export, seed or '
                    'validation split; this run replaces them.', out)
    return {}
  kept = {part: earlier[part] for part in protocol.PARTS
          if part not in parts and part in earlier}
  if kept:
    logging.info('Keeping the earlier %s results in %s.', ', '.join(kept),
                 out)
  return kept


def _write_report(paths: Sequence[str], out: str | None) -> None:
  """One markdown table of the protocol results of several feature sets.

  Args:
    paths: feature folders (their protocol_results.json) or results files.
    out: where to write the table too (stdout only when None).
  """
  named = []
  for path in paths:
    folder = path if os.path.isdir(path) else None
    if folder:
      path = os.path.join(path, PROTOCOL_FILENAME)
    if not os.path.isfile(path):
      raise app.UsageError(
          f'No protocol results at {path}: run `python -m '
          'wgan_jax.linear_eval --features=FOLDER --protocol=dcgan` first.')
    with open(path, encoding='utf-8') as f:
      results = json.load(f)
    name = _feature_set_name(results, folder)
    if not results.get('finished', True):
      name += ' (unfinished)'
    named.append((name, results))
  table = protocol.markdown_table(named)
  if out:
    fileio.atomic_write_text(out, table + '\n')
  print(table, flush=True)


def run() -> None:
  """Entry point of `python -m wgan_jax.linear_eval`."""
  _define_flags()
  app.run(main, argv=_undash_flags(sys.argv, ('train_per_class', 'max_iter')))


if __name__ == '__main__':
  run()
