"""Multi-process runs: when to start jax.distributed, and preemption.

Importable without flags; `wgan_jax.main` calls these.
"""

import os
import signal

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

# A coordinator on one of these hosts listens there only, not on every
# interface (JAX's default bind address is [::]:port).
_LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '[::1]')


def _env_int(env, name: str) -> int:
  try:
    return int(env.get(name, '0'))
  except ValueError:
    return 0


def multiprocess_evidence(env=None) -> str | None:
  """Says why the environment looks like a launch of several processes.

  Only evidence that needs no network look-up counts: a Slurm step of more
  than one task (srun sets SLURM_STEP_NUM_TASKS; a batch script does not
  start several processes), Open MPI with more than one rank, a TPU
  environment naming several workers, or JAX_COORDINATOR_ADDRESS. A Cloud
  TPU VM pod is only known to JAX through its metadata server, so on one
  pass --distributed (launch/tpu_pod.sh does).

  Args:
    env: the environment to read; os.environ when None.

  Returns:
    A short reason, or None for a plain single-process start.
  """
  env = os.environ if env is None else env
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS is set'
  if _env_int(env, 'SLURM_STEP_NUM_TASKS') > 1:
    return f'a Slurm step of {env["SLURM_STEP_NUM_TASKS"]} tasks'
  if _env_int(env, 'OMPI_COMM_WORLD_SIZE') > 1:
    return f'Open MPI with {env["OMPI_COMM_WORLD_SIZE"]} ranks'
  for name in ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES'):
    if len([h for h in env.get(name, '').split(',') if h]) > 1:
      return f'{name} names several workers'
  return None


def initialize(distributed: bool | None = None,
               coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls jax.distributed.initialize if this is one of several processes.

  Must run before anything else uses JAX. Values left as None are detected
  by JAX from the cluster (Slurm, Open MPI, Cloud TPU, Kubernetes); with
  all three given, JAX detects nothing, so it makes no network look-up.

  Args:
    distributed: True to initialise whatever the environment says, False
      never to, None (the default) only when a value below is given or
      `multiprocess_evidence()` finds a multi-process launch, so a plain
      single-process start is left as it is.
    coordinator_address: 'host:port' of process 0's coordinator.
    num_processes: how many processes the run has.
    process_id: this process's index, in [0, num_processes).

  Returns:
    Whether jax.distributed was initialised.

  Raises:
    ValueError: values given together with distributed=False.
  """
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  given = {k: v for k, v in given.items() if v is not None}
  if distributed is False:
    if given:
      raise ValueError(f'--nodistributed contradicts --{", --".join(given)}.')
    return False
  if distributed:
    reason = '--distributed'
  elif given:
    reason = '--' + ', --'.join(given)
  else:
    reason = multiprocess_evidence()
  if reason is None:
    return False
  kwargs = dict(given)
  if coordinator_address:
    if coordinator_address.rsplit(':', 1)[0] in _LOOPBACK_HOSTS:
      kwargs['coordinator_bind_address'] = coordinator_address
  if len(given) == 3:
    kwargs['cluster_detection_method'] = 'deactivate'
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed initialised (%s): process %d of %d.', reason,
               jax.process_index(), jax.process_count())
  return True


def check_same_latest_step(latest_step: int | None, directory: str):
  """Raises on every process unless all see the same latest checkpoint.

  Every process writes and restores the checkpoints, so the checkpoint
  directory must be one directory that all hosts share (a network file
  system or a bucket mount); with a local disk per host they would resume
  from different steps.

  Args:
    latest_step: this process's latest checkpoint step, None for none.
    directory: the checkpoint directory, for the message.
  """
  if jax.process_count() == 1:
    return
  step = -1 if latest_step is None else latest_step
  steps = multihost_utils.process_allgather(np.asarray(step, np.int64))
  steps = [int(s) for s in np.ravel(steps)]
  if len(set(steps)) > 1:
    raise ValueError(
        f'The processes see different latest checkpoints in {directory} '
        f'(by process: {steps}; -1 is none). The workdir must be one '
        'directory shared by all hosts.')


class PreemptionWatch:
  """Tells every process, at the same step boundary, to save and stop.

  One process: a SIGTERM handler sets a flag that the next step boundary
  reads. Several processes: JAX's preemption sync service, which
  jax.distributed.initialize starts, catches SIGTERM itself (in C++, so no
  Python handler is installed here, which would replace it), tells every
  process, and picks one step past the furthest any has reached; every
  process stops at that step. It is asked at every step boundary, which
  costs no device synchronisation.

  Create it in the main thread, before training; `close()` restores the
  previous SIGTERM handler.
  """

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._received = False
    self._installed = False
    self._previous = signal.SIG_DFL
    self._warned = False
    if not self._multi:
      previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      # None: a handler set outside Python; the default is the best guess.
      self._previous = signal.SIG_DFL if previous is None else previous
      self._installed = True

  def _on_sigterm(self, signum, frame):
    del signum, frame  # Unused.
    self._received = True

  def should_stop(self, step: int) -> bool:
    """Whether all processes stop after `step`; call at every step, in order.

    Args:
      step: the step just completed.

    Returns:
      True once a SIGTERM has arrived (one process) or at the agreed step
      (several).
    """
    if not self._multi:
      return self._received
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:
      # The service is off (jax_enable_preemption_service=False).
      if not self._warned:
        logging.warning('No preemption sync service (%s): a SIGTERM will end '
                        'the run without a checkpoint.', e)
        self._warned = True
      return False

  def close(self):
    """Restores the SIGTERM handler that was there before."""
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
