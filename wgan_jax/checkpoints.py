"""Checkpoints and the config saved beside them, in a training workdir."""

import json
import logging as std_logging
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from wgan_jax import fileio

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
# Settings a resumed run may change: how long it runs, how it logs and
# checkpoints, where the data lives, and implementation choices that leave
# the parameters and the maths unchanged.
RESUMABLE_CHANGES = frozenset({
    'num_steps', 'log_every_steps', 'checkpoint_every_steps',
    'keep_checkpoints', 'num_samples', 'data_dir', 'model.conv_impl'})
# Keys added after runs were saved without them, and the value those runs
# used, so that an older workdir still resumes with the same settings.
ADDED_KEYS = {'model.dtype': 'float32', 'model.arch': 'dcgan',
              'clip_value': 0.01, 'optimizer.name': 'adam',
              'optimizer.linear_decay': False}


def _plain(value):
  """Lists for tuples, recursively, so that saved and live configs compare."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads the config a training run saved in its workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'No {CONFIG_FILE} in {workdir!r}: is it a wgan_jax workdir? Train '
        'first with `python -m wgan_jax.main --config=... --workdir=DIR`.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def check_resumable(workdir: str, config: ml_collections.ConfigDict):
  """Raises if resuming the run in `workdir` with `config` would mix runs.

  Only the length of the run, logging and checkpoint cadence, the data's
  location and the convolution implementation may change on a resume;
  another architecture would fail deep inside the restore, and other
  changed settings would make config.json lie about the run.

  Args:
    workdir: a training workdir that holds a checkpoint.
    config: the config about to be used there.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flat(_plain(json.load(f)))
  saved = {**ADDED_KEYS, **saved}
  live = {**ADDED_KEYS, **_flat(_plain(config.to_dict()))}
  diff = sorted(k for k in set(saved) | set(live)
                if k not in RESUMABLE_CHANGES and saved.get(k) != live.get(k))
  if not diff:
    return
  details = '; '.join(f'{k}: saved {saved.get(k)!r}, now {live.get(k)!r}'
                      for k in diff)
  what = ('another architecture' if any(k.startswith('model.') for k in diff)
          else 'other settings')
  raise ValueError(
      f'The workdir {workdir!r} holds a run of {what} ({details}). Use a new '
      f'--workdir, or resume with its saved config ({path}): '
      f'--config=configs/from_workdir.py:{workdir}')


def save_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes the config as JSON beside the checkpoints, atomically."""
  fileio.atomic_write_text(os.path.join(workdir, CONFIG_FILE),
                           config.to_json(indent=2, sort_keys=True))


def create_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """An orbax manager for workdir/checkpoints keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any):
  """Starts an asynchronous save; orbax renames a finished save into place."""
  manager.save(step, args=ocp.args.StandardSave(state))
  logging.info('Checkpointing step %d to %s (in the background).', step,
               manager.directory)


class _DropOrbaxInfo(std_logging.Filter):
  """Passes every record but orbax's below WARNING."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING
            or f'{os.sep}orbax{os.sep}' not in record.pathname)


def quiet_orbax_info() -> None:
  """Hides orbax's INFO lines from the absl log; its warnings still show.

  Orbax logs some 30 INFO lines per save, two thirds of a training run's
  console, which buries the metrics; `save` logs one line of its own.
  """
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> Any:
  """Restores a state laid out like `abstract_state` (shapes and shardings).

  Restoring into an abstract state built for the current devices lets a
  checkpoint move between device counts.

  Args:
    manager: the workdir's manager.
    abstract_state: a pytree of jax.ShapeDtypeStruct with shardings.
    step: the step to restore; the latest when None.

  Returns:
    The restored state.
  """
  if step is None:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f'No checkpoint in {manager.directory}. Train first with '
        '`python -m wgan_jax.main --config=... --workdir=DIR`.')
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f'No checkpoint for step {step} in {manager.directory}; it has steps '
        f'{sorted(manager.all_steps())}.')
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f'The checkpoint at step {step} in {manager.directory} does not match '
        f'the configured architecture ({e}). Use the config it was trained '
        'with.') from e


def abstract_like(state: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shapes and dtypes of `state`, placed with `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)
