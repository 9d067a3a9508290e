"""Command line: trains a WGAN-GP.

  python -m wgan_jax.main --config=configs/default.py --workdir=runs/x \
      [--config.batch_size=128 ...]

One of several processes (see launch/ and the README's "Multi-host
training"): add --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or --distributed to let JAX read them from the cluster
(Slurm steps of several tasks are detected without it). A SIGTERM saves a
checkpoint at the next step boundary and exits with status 0; the same
command resumes from it.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from wgan_jax import checkpoints
from wgan_jax import distributed
from wgan_jax import input_pipeline
from wgan_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the run is written.')
config_flags.DEFINE_config_file(
    'config', None, 'A config file with get_config(); override fields with '
    '--config.key=value.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', None, 'Call jax.distributed.initialize, leaving what the '
    'flags below do not give to JAX to detect (TPU pods, Slurm, Open MPI). '
    'Unset: only when one of them is given or the environment shows a '
    'multi-process launch.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of the coordinator, which '
    'process 0 starts (on a loopback host it listens there only).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process, in [0, num_processes).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # TensorFlow only feeds the input pipeline; keep it off the accelerators.
  input_pipeline.hide_accelerators_from_tf()
  # Before anything else touches JAX's backends.
  distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value,
                         _NUM_PROCESSES.value, _PROCESS_ID.value)
  if jax.process_index() > 0:
    # Process 0 speaks for the run; the others only warn and fail.
    logging.set_verbosity(logging.WARNING)
  checkpoints.quiet_orbax_info()
  logging.info('JAX %s, backend %s', jax.__version__, jax.default_backend())
  watch = distributed.PreemptionWatch()
  try:
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value,
                             should_stop=watch.should_stop)
  finally:
    watch.close()


if __name__ == '__main__':
  app.run(main)
