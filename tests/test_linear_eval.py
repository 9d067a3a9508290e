"""Tests for wgan_jax.linear_eval."""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from wgan_jax import linear_eval
from wgan_jax import protocol

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_LAYOUT = {'layers': ['conv1', 'conv2'], 'pool': 4,
           'splits': {'train': {}, 'test': {}}}


def _make_featdir(path, n_train=30, n_test=10, n_classes=3, dim=6, seed=0):
  """Writes a tiny export whose classes are linearly separable."""
  rng = np.random.default_rng(seed)

  def split(per_class):
    labels = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(labels)
    features = np.zeros((labels.size, dim), np.float32)
    features[np.arange(labels.size), labels] = 1.0
    features += rng.normal(0.0, 0.05, features.shape).astype(np.float32)
    return features, labels.astype(np.int64)

  path.mkdir(parents=True, exist_ok=True)
  train_x, train_y = split(n_train)
  test_x, test_y = split(n_test)
  np.save(path / 'train_features.npy', train_x)
  np.save(path / 'train_labels.npy', train_y)
  np.save(path / 'test_features.npy', test_x)
  np.save(path / 'test_labels.npy', test_y)
  (path / 'layout.json').write_text(json.dumps(_LAYOUT))
  return path


def _run_cli(args, cwd, timeout=120):
  """Runs `python -m wgan_jax.linear_eval ARGS`; returns the process.

  A subprocess, because the CLI defines absl flags on the global registry.
  """
  env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT))
  return subprocess.run(
      [sys.executable, '-m', 'wgan_jax.linear_eval', *args],
      capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
      check=False)


def test_class_balanced_subset_exact_counts():
  labels = np.array([0] * 7 + [1] * 12 + [2] * 5 + [5] * 9)
  rows = protocol.class_balanced_subset(labels, per_class=5, seed=0)
  assert np.all(np.diff(rows) > 0)  # sorted and without repeats
  classes, counts = np.unique(labels[rows], return_counts=True)
  np.testing.assert_array_equal(classes, [0, 1, 2, 5])
  np.testing.assert_array_equal(counts, [5, 5, 5, 5])


def test_class_balanced_subset_seeded():
  labels = np.tile(np.arange(4), 50)
  first = protocol.class_balanced_subset(labels, per_class=10, seed=3)
  again = protocol.class_balanced_subset(labels, per_class=10, seed=3)
  other = protocol.class_balanced_subset(labels, per_class=10, seed=4)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_class_balanced_subset_too_few_names_class():
  labels = np.array([0] * 10 + [1] * 10 + [7] * 3)
  with pytest.raises(ValueError, match='class 7 has only 3 rows'):
    protocol.class_balanced_subset(labels, per_class=4, seed=0)


def test_evaluate_known_answer(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  results = linear_eval.evaluate(featdir, C=0.01)
  assert results['test_accuracy'] == 1.0
  assert results['converged'] is True
  assert results['n_train'] == 90
  assert results['n_test'] == 30
  assert results['feature_dim'] == 6
  assert results['n_classes'] == 3
  assert results['C'] == 0.01
  assert results['train_per_class'] is None
  assert results['layout'] == _LAYOUT
  assert results['peak_rss_mib'] > 0
  assert results['fit_seconds'] >= 0
  assert isinstance(results['sklearn_version'], str)
  json.dumps(results)  # must be serialisable as-is


def test_evaluate_train_per_class(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  results = linear_eval.evaluate(featdir, train_per_class=4, seed=1)
  assert results['n_train'] == 12
  assert results['train_per_class'] == 4
  assert results['test_accuracy'] == 1.0


def test_evaluate_emits_no_warnings(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    linear_eval.evaluate(featdir, C=0.01)


def test_non_convergence_is_logged_not_warned(tmp_path, caplog):
  # Noisy, overlapping classes with one iteration cannot converge.
  featdir = _make_featdir(tmp_path / 'features', dim=40, n_train=100)
  rng = np.random.default_rng(0)
  np.save(
      featdir / 'train_features.npy',
      rng.normal(size=(300, 40)).astype(np.float32),
  )
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with caplog.at_level(logging.WARNING):
      results = linear_eval.evaluate(featdir, C=10.0, max_iter=1)
  assert results['converged'] is False
  assert 'did not converge' in caplog.text


def test_missing_features_dir(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(FileNotFoundError, match='wgan_jax.export') as info:
    linear_eval.evaluate(missing)
  assert str(missing) in str(info.value)


def test_missing_feature_file(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  os.remove(featdir / 'test_labels.npy')
  with pytest.raises(FileNotFoundError, match='test_labels.npy') as info:
    linear_eval.evaluate(featdir)
  assert 'wgan_jax.export' in str(info.value)


def test_row_mismatch(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  np.save(featdir / 'train_labels.npy', np.zeros(89, np.int64))
  with pytest.raises(ValueError, match='row'):
    linear_eval.evaluate(featdir)


def test_non_finite_features_are_refused(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  features = np.load(featdir / 'train_features.npy')
  features[7, 2] = np.nan
  np.save(featdir / 'train_features.npy', features)
  with pytest.raises(ValueError, match='row 7 holds NaN') as info:
    linear_eval.evaluate(featdir)
  assert '--overwrite' in str(info.value)


def test_truncated_features_file_is_named(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  path = featdir / 'test_features.npy'
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(ValueError, match='Cannot read the test split') as info:
    linear_eval.evaluate(featdir)
  assert '--overwrite' in str(info.value)


def test_too_few_rows_for_train_per_class_names_it(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  with pytest.raises(ValueError, match='train_per_class=31'):
    linear_eval.evaluate(featdir, train_per_class=31)


def test_undash_flags():
  argv = ['prog', '--train-per-class=5', '--max-iter', '9', '--C=1']
  argv += ['--', '--train-per-class=1']
  undashed = linear_eval._undash_flags(argv, ('train_per_class', 'max_iter'))
  assert undashed == [
      'prog',
      '--train_per_class=5',
      '--max_iter',
      '9',
      '--C=1',
      '--',
      '--train-per-class=1',  # positional after '--': untouched
  ]


def test_cli_writes_results(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  proc = _run_cli([f'--features={featdir}', '--train-per-class=10',
                   '--C=0.01'], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(
      'test accuracy 100.00% (C=0.01, 30 train rows x 6 dims, fit '
  )
  results = json.loads((featdir / 'results.json').read_text())
  assert results['test_accuracy'] == 1.0
  assert results['train_per_class'] == 10
  assert results['layout'] == _LAYOUT


def test_features_of_two_exports_are_refused(tmp_path):
  featdir = _make_featdir(tmp_path / 'feats')
  # A later export of the test split alone rewrote layout.json.
  (featdir / 'layout.json').write_text(json.dumps({'splits': {'test': {}}}))
  with pytest.raises(ValueError, match='different exports'):
    linear_eval.evaluate(featdir)


def test_cli_refuses_a_single_fit_over_the_memory_budget(tmp_path):
  featdir = _make_featdir(tmp_path / 'features')
  proc = _run_cli([f'--features={featdir}', '--memory_budget_gib=1e-9'],
                  tmp_path)
  assert proc.returncode != 0
  assert 'over the' in proc.stderr and '--protocol=dcgan' in proc.stderr
  assert not (featdir / 'results.json').exists()


@pytest.mark.parametrize('flags, message', [
    (['--protocol=dcgan', '--C=0.1'],
     '--C has no effect with --protocol=dcgan'),
    (['--solver=lean', '--subsets=3'],
     '--subsets, --solver have no effect with --protocol=single'),
    (['--C=-1'], '--C must be a positive number'),
    (['--report=elsewhere'], 'not both'),
])
def test_cli_refuses_flags_it_would_ignore_or_misuse(tmp_path, flags,
                                                     message):
  featdir = _make_featdir(tmp_path / 'features')
  proc = _run_cli([f'--features={featdir}', *flags], tmp_path)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not (featdir / 'results.json').exists()
  assert not (featdir / 'protocol_results.json').exists()


def test_cli_report_refuses_evaluation_flags(tmp_path):
  proc = _run_cli([f'--report={tmp_path}', '--C=1', '--solver=lean'],
                  tmp_path)
  assert proc.returncode != 0
  assert 'ignores --C, --solver; drop them' in proc.stderr


def test_cli_protocol_writes_each_part_and_a_report(tmp_path):
  featdir = _make_featdir(tmp_path / 'features', n_train=40, n_test=10)
  run = lambda args: _run_cli(args, tmp_path, timeout=300)
  proc = run([f'--features={featdir}', '--protocol=dcgan', '--subsets=2',
              '--val_per_class=10', '--subset_per_class=10',
              '--solver=lean'])
  assert proc.returncode == 0, proc.stderr
  results = json.loads((featdir / 'protocol_results.json').read_text())
  assert results['finished']
  assert results['all_labels']['test_accuracy'] == 1.0
  assert len(results['per_class']['accuracies']) == 2
  assert 'Wrote' in proc.stderr  # After each part, and at the end.
  table = (featdir / 'protocol_results.md').read_text()
  assert table.splitlines()[-1].startswith('| features (features) | 6 | 120 |')
  assert '| 10 per class, mean +- std (n) |' in table.splitlines()[0]
  # One part again (say, after an interrupted run): the other part's
  # results stay in the file, rather than being replaced by nothing.
  proc = run([f'--features={featdir}', '--protocol=dcgan', '--subsets=3',
              '--val_per_class=10', '--subset_per_class=10',
              '--solver=lean', '--parts=per_class'])
  assert proc.returncode == 0, proc.stderr
  again = json.loads((featdir / 'protocol_results.json').read_text())
  assert again['all_labels'] == results['all_labels']
  assert len(again['per_class']['accuracies']) == 3
  # Several evaluated folders in one table; a folder not evaluated is named.
  copy = tmp_path / 'copied'
  shutil.copytree(featdir, copy)
  proc = run([f'--report={featdir},{copy}', f'--out={tmp_path}/r.md'])
  assert proc.returncode == 0, proc.stderr
  rows = (tmp_path / 'r.md').read_text().splitlines()
  assert len(rows) == 4
  # Named by the folder given, not the one recorded when it was evaluated.
  assert rows[2].startswith(f'| {featdir.name} (')
  assert rows[3].startswith('| copied (')
  proc = run([f'--report={tmp_path}'])
  assert proc.returncode != 0 and 'No protocol results' in proc.stderr
