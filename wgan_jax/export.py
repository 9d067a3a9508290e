"""Exports CIFAR-10 critic features from a checkpoint (the DCGAN protocol).

  python -m wgan_jax.export --workdir=DIR [--step=N] --out=FEATDIR
  python -m wgan_jax.export --workdir=DIR --source=random --out=FEATDIR
  python -m wgan_jax.export --config=configs/default.py --source=random \
      --out=FEATDIR
  python -m wgan_jax.export --source=pixels --out=FEATDIR

For each split it writes `{name}_features.npy` (float32 [N, D], every
example once, in dataset order), `{name}_labels.npy`, and `layout.json`
(layers, channels, grid, total dimension, step); `name` is the split without
its slice, so `--splits=train[:10000],test` writes train_* and test_*.
Features are every conv layer's post-activation map, max-pooled to 4x4,
flattened and concatenated.
A batch-norm critic (the paper's) normalises with statistics recomputed on
the CIFAR-10 train images by default, as the DCGAN code did: the mean over
full batches of each batch's mean and variance (`--bn_stats=recompute`); or
with the running averages from training (`--bn_stats=running`).
"""

import glob
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
import tqdm

from wgan_jax import checkpoints
from wgan_jax import fileio
from wgan_jax import input_pipeline
from wgan_jax import models
from wgan_jax import train

SOURCES = ('checkpoint', 'random', 'pixels')

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; latest if unset.')
_OUT = flags.DEFINE_string('out', None, 'Folder for the features.')
_SOURCE = flags.DEFINE_enum(
    'source', 'checkpoint', SOURCES, 'checkpoint: the trained critic; random: '
    'the same critic at initialisation (a baseline); pixels: raw pixels.')
_DATASET = flags.DEFINE_string('dataset', 'cifar10', 'TFDS dataset.')
_SPLITS = flags.DEFINE_list('splits', ['train', 'test'], 'Splits to export.')
_BATCH = flags.DEFINE_integer('batch_size', 500, 'Examples per forward pass.')
_BN_STATS = flags.DEFINE_enum(
    'bn_stats', 'recompute', ('recompute', 'running'),
    'Batch-norm critics only: recompute the statistics on the train split '
    '(DCGAN), or use the running averages from training.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'TFDS data dir; TFDS_DATA_DIR if unset.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace an export (and its results) already in '
    '--out; without it such a folder is refused.')

# What an export writes, and the results computed from it (linear_eval's
# results.json, protocol_results.json and .md): a new export into the same
# folder makes every one of them stale.
_EXPORT_PATTERNS = ('layout.json', '*_features.npy', '*_labels.npy',
                    '*results.json', '*results.md')


def load_critic_variables(workdir: str | None, source: str,
                          step: int | None = None, config=None):
  """The critic module and its variables from a workdir or a config.

  Args:
    workdir: a training workdir (config.json, checkpoints/).
    source: 'checkpoint' or 'random' (the initial weights of that run).
    step: checkpoint step; the latest when None.
    config: for 'random' without a workdir, the run config to initialise.

  Returns:
    (critic, variables, step): step is 0 for 'random'.
  """
  if workdir:
    config = checkpoints.load_config(workdir)
  elif source != 'random' or config is None:
    raise ValueError(f'--source={source} needs --workdir' + (
        ' (or --config)' if source == 'random' else '') + '.')
  gen, critic = models.create_models(config.model)
  state = jax.jit(lambda key: train.init_state(config, gen, critic, key))(
      jax.random.PRNGKey(config.seed))
  if source == 'checkpoint':
    manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
    replicated = jax.sharding.NamedSharding(train.create_mesh(),
                                            jax.sharding.PartitionSpec())
    state = checkpoints.restore(
        manager, checkpoints.abstract_like(state, replicated), step)
  variables = {'params': state.critic.params}
  if state.critic.batch_stats:
    variables['batch_stats'] = state.critic.batch_stats
  return critic, variables, int(state.step)


def recompute_batch_stats(critic, variables, dataset: str, split: str,
                          batch_size: int, data_dir: str | None):
  """Batch-norm statistics averaged over the full batches of a split.

  Each batch is normalised with its own statistics (training mode) and the
  per-batch means and variances are averaged, as DCGAN's evaluation code and
  "precise BN" do; the short last batch is left out.

  Returns:
    `variables` with the recomputed 'batch_stats'.
  """
  probe = critic.clone(bn_momentum=0.0)  # Stores each batch's statistics.

  @jax.jit
  def batch_stats(images):
    _, updates = probe.apply(variables, images, train=True,
                             mutable=['batch_stats'])
    return updates['batch_stats']

  ds = input_pipeline.create_eval_dataset(dataset, split, batch_size,
                                          data_dir=data_dir)
  total, count = None, 0
  for batch in input_pipeline.as_numpy_iterator(ds):
    if len(batch['index']) < batch_size:
      continue
    stats = batch_stats(batch['image'])
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
  if not count:
    raise ValueError(f'{split} has no full batch of {batch_size} to '
                     'recompute batch-norm statistics from.')
  logging.info('Recomputed batch-norm statistics over %d batches of %s.',
               count, split)
  return dict(variables, batch_stats=jax.tree.map(lambda t: t / count, total))


def make_feature_fn(critic, variables, mesh):
  """A jitted images -> features function, data parallel over the mesh."""
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  @jax.jit
  def features(variables, images):
    _, maps = critic.apply(variables, images, train=False,
                           return_features=True)
    return models.pool_features(maps)

  return lambda images: features(variables, jax.device_put(images, shard))


def export_split(feature_fn, dim: int, split: str, out: str, dataset: str,
                 batch_size: int, data_dir: str | None) -> dict:
  """Writes one split's features and labels; returns its summary.

  Rows are written at their dataset index through a memory map, so memory
  stays bounded; the last partial batch is padded for the compiled function
  and the padding dropped. Files appear under their final names only when
  complete.
  """
  n = input_pipeline.num_examples(dataset, split, data_dir)
  # 'train[:10000]' is written as train_*.npy, which linear_eval reads.
  name = _split_name(split)
  final = os.path.join(out, f'{name}_features.npy')
  tmp = final + '.partial'
  feats = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.float32,
                                    shape=(n, dim))
  try:
    labels, seconds = _write_rows(feature_fn, feats, n, split, dataset,
                                  batch_size, data_dir)
  except BaseException:
    # An interrupted export leaves no half-written file (5.7 GB for the
    # default critic's train split) behind.
    del feats
    os.remove(tmp)
    raise
  feats.flush()
  del feats
  os.replace(tmp, final)
  fileio.atomic_save_npy(os.path.join(out, f'{name}_labels.npy'), labels)
  logging.info('%s: %d x %d features in %.1f s (%.0f images/s).', split, n,
               dim, seconds, n / seconds)
  return dict(split=split, rows=n, seconds=seconds,
              images_per_sec=n / seconds)


def _write_rows(feature_fn, feats, n, split, dataset, batch_size, data_dir):
  """Fills `feats` (a memory map) row by row; returns (labels, seconds)."""
  labels = np.full((n,), -1, np.int64)
  seen = np.zeros((n,), bool)
  ds = input_pipeline.create_eval_dataset(dataset, split, batch_size,
                                          data_dir=data_dir)
  start = time.perf_counter()
  with tqdm.tqdm(total=n, desc=f'{dataset} {split}', unit='img') as bar:
    for batch in input_pipeline.as_numpy_iterator(ds):
      b = len(batch['index'])
      images = batch['image']
      if b < batch_size:
        images = np.concatenate(
            [images, np.zeros((batch_size - b,) + images.shape[1:],
                              images.dtype)])
      values = np.asarray(feature_fn(images))[:b]
      if not np.isfinite(values).all():
        raise FloatingPointError(
            f'Non-finite features for {split} examples {batch["index"][0]}.. '
            f'{batch["index"][-1]}: the checkpoint has diverged.')
      feats[batch['index']] = values
      labels[batch['index']] = batch['label']
      seen[batch['index']] = True
      bar.update(b)
  seconds = time.perf_counter() - start
  if not seen.all():
    raise RuntimeError(f'{(~seen).sum()} of {n} {split} examples were not '
                       'exported.')
  return labels, seconds


def _split_name(split: str) -> str:
  """The split a TFDS split string slices: 'train' for 'train[:10000]'."""
  return split.split('[')[0].strip()


def clear_previous_export(out: str, overwrite: bool) -> None:
  """Refuses, or with `overwrite` removes, an export already in `out`.

  Stale `.partial` files (from a killed export) always go. layout.json goes
  first: linear_eval refuses a folder without it, so an export interrupted
  after this point cannot be scored as a mix of old and new files.

  Raises:
    FileExistsError: if `out` holds an export or results and not overwrite.
  """
  def names(*patterns):
    return sorted({os.path.basename(path) for pattern in patterns
                   for path in glob.glob(os.path.join(glob.escape(out),
                                                      pattern))})
  found = names(*_EXPORT_PATTERNS)
  if found and not overwrite:
    raise FileExistsError(
        f'{out} already holds an export or its results ({", ".join(found)}); '
        'choose another --out, or pass --overwrite to replace them all.')
  found.sort(key=lambda name: name != 'layout.json')
  for name in found + names('*.partial'):
    os.remove(os.path.join(out, name))


def export(out: str, source: str = 'checkpoint', workdir: str | None = None,
           step: int | None = None, dataset: str = 'cifar10',
           splits=('train', 'test'), batch_size: int = 500,
           data_dir: str | None = None, bn_stats: str = 'recompute',
           config=None, overwrite: bool = False) -> dict:
  """Exports features of `splits` to `out`; returns the layout written.

  Args:
    out: output folder (created).
    source: one of SOURCES.
    workdir: the training workdir (not needed for 'pixels').
    step: checkpoint step (latest when None).
    dataset: TFDS dataset to featurise.
    splits: its splits.
    batch_size: examples per forward pass (rounded up to the device count).
    data_dir: TFDS data dir (TFDS_DATA_DIR when None).
    bn_stats: for a batch-norm critic, 'recompute' on the dataset's train
      split or use the 'running' averages; ignored by other critics.
    config: for 'random' without a workdir, the run config whose critic to
      initialise.
    overwrite: replace an export already in `out`, and its results (see
      `clear_previous_export`); refused otherwise.

  Returns:
    The layout dict, also written to out/layout.json.
  """
  for split in splits:
    mixed = sorted({_split_name(part) for part in split.split('+')})
    if len(mixed) > 1:
      # Written as {first name}_features.npy: test images would land in the
      # train features, and the test accuracy would be meaningless.
      raise ValueError(
          f'--splits entry {split!r} combines the splits {", ".join(mixed)}; '
          'each entry must be a slice of one split, e.g. '
          "'train[:10000],test'.")
  names = [_split_name(split) for split in splits]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    # Each split is written to one {name}_features.npy: a second slice of
    # the same split would silently replace the first.
    raise ValueError(
        f'--splits names {", ".join(repeated)} more than once ({splits}); '
        'give one slice per split, e.g. train[:20000] rather than '
        'train[:10000],train[10000:20000].')
  mesh = train.create_mesh()
  batch_size = -(-batch_size // mesh.size) * mesh.size
  if source == 'pixels':
    layout = dict(source='pixels', layers=[], grid=None, total_dim=32 * 32 * 3,
                  step=None)
    feature_fn = lambda images: images.reshape(images.shape[0], -1)
  else:
    critic, variables, step = load_critic_variables(workdir, source, step,
                                                    config)
    if critic.norm == 'batch' and bn_stats == 'recompute':
      variables = recompute_batch_stats(critic, variables, dataset, 'train',
                                        batch_size, data_dir)
    layout = models.feature_layout(critic.widths, critic.strides)
    layout.update(source=source, step=step,
                  workdir=os.path.abspath(workdir) if workdir else None,
                  critic_norm=critic.norm,
                  bn_stats=bn_stats if critic.norm == 'batch' else None)
    feature_fn = make_feature_fn(critic, variables, mesh)
  clear_previous_export(out, overwrite)
  created = not os.path.isdir(out)
  os.makedirs(out, exist_ok=True)
  layout.update(dataset=dataset, splits={})
  try:
    for name, split in zip(names, splits):
      layout['splits'][name] = export_split(
          feature_fn, layout['total_dim'], split, out, dataset, batch_size,
          data_dir)
  except BaseException:
    # A folder this call made and filled with nothing (e.g. the dataset is
    # missing) would only block the next try's path.
    if created and not os.listdir(out):
      os.rmdir(out)
    raise
  layout['peak_rss_mib'] = fileio.peak_rss_mib()
  fileio.atomic_write_json(os.path.join(out, 'layout.json'), layout)
  return layout


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _OUT.value:
    raise app.UsageError('--out is required.')
  input_pipeline.hide_accelerators_from_tf()
  checkpoints.quiet_orbax_info()
  if _WORKDIR.value and flags.FLAGS.config is not None:
    raise app.UsageError('Give --workdir or --config, not both: a workdir '
                         'brings its own config.')
  if _SOURCE.value == 'pixels' and (_WORKDIR.value or _STEP.value is not None
                                    or flags.FLAGS.config is not None):
    raise app.UsageError('--source=pixels exports the images themselves and '
                         'reads no critic: drop --workdir, --step and '
                         '--config.')
  layout = export(_OUT.value, _SOURCE.value, _WORKDIR.value, _STEP.value,
                  _DATASET.value, _SPLITS.value, _BATCH.value, _DATA_DIR.value,
                  _BN_STATS.value, flags.FLAGS.config, _OVERWRITE.value)
  step = '' if layout['step'] is None else f' (step {layout["step"]})'
  print(f'Wrote {layout["total_dim"]}-dim {layout["source"]} features'
        f'{step} to {_OUT.value}; peak RSS '
        f'{layout["peak_rss_mib"]:.0f} MiB.')


if __name__ == '__main__':
  # Defined here, not on import: wgan_jax.main and wgan_jax.benchmark define
  # a --config of their own, and a module may import this one with them.
  config_flags.DEFINE_config_file(
      'config', None, 'With --source=random and no --workdir: the config '
      'whose critic to initialise (--config.key=value overrides it).',
      lock_config=True)
  app.run(main)
