"""Command line: trains a WGAN-GP.

  python -m wgan_jax.main --config=configs/default.py --workdir=runs/x \
      [--config.batch_size=128 ...]
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from wgan_jax import input_pipeline
from wgan_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the run is written.')
config_flags.DEFINE_config_file(
    'config', None, 'A config file with get_config(); override fields with '
    '--config.key=value.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # TensorFlow only feeds the input pipeline; keep it off the accelerators.
  input_pipeline.hide_accelerators_from_tf()
  logging.info('JAX %s, backend %s', jax.__version__, jax.default_backend())
  train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
