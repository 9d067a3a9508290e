"""The config a training workdir was run with, to resume or extend it as is.

  TFDS_DATA_DIR=../shared/tfds python -m wgan_jax.main \
      --config=configs/from_workdir.py:runs/narrow --workdir=runs/narrow \
      --config.num_steps=1400

Reads WORKDIR/config.json (written by training) back into a ConfigDict;
the text after the colon is the workdir. Overrides work as with any config.
"""

import json
import os

import ml_collections


def _tuples(value):
  """JSON turned the configs' tuples into lists; turn them back."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def get_config(workdir: str | None = None):
  """Returns the config saved in `workdir`.

  Args:
    workdir: a training workdir, given after the colon of --config.
  """
  if not workdir:
    raise ValueError('Name the workdir after a colon: '
                     '--config=configs/from_workdir.py:WORKDIR')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir!r} is not a '
                            'training workdir (training writes config.json).')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))
