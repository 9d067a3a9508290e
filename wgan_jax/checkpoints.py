"""Checkpoints and the config saved beside them, in a training workdir."""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from wgan_jax import fileio

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
# Model settings that leave the parameters unchanged.
_NOT_ARCHITECTURE = frozenset({'conv_impl'})


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


def check_architecture(workdir: str, config: ml_collections.ConfigDict):
  """Raises if the workdir holds a run of another architecture.

  Resuming such a run would fail deep inside the restore, or worse, mix two
  experiments in one workdir.

  Args:
    workdir: the training workdir.
    config: the config about to be used there.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _plain(json.load(f).get('model', {}))
  live = _plain(config.model.to_dict())
  diff = sorted(k for k in (set(saved) | set(live)) - _NOT_ARCHITECTURE
                if saved.get(k) != live.get(k))
  if diff:
    details = '; '.join(
        f'model.{k}: saved {saved.get(k)!r}, now {live.get(k)!r}' for k in diff)
    raise ValueError(
        f'The workdir {workdir!r} holds a run of another architecture '
        f'({details}). Use a new --workdir, or the saved config '
        f'({path}).')


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
