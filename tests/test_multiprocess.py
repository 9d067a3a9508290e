"""Multi-process training on one machine: CPU processes on 127.0.0.1.

One real run of `launch/local.sh 2` (two `wgan_jax.main` processes of 2 CPU
devices each, a coordinator on a free local port, gloo collectives) trains
a tiny config until a SIGTERM to process 1; the tests check what it left
against one process. Subprocesses are killed on timeout or failure.
"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np

from configs import smoke
from wgan_jax import checkpoints
from wgan_jax import distributed
from wgan_jax import input_pipeline
from wgan_jax import models
from wgan_jax import train

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOCAL_SH = os.path.join(_REPO, 'launch', 'local.sh')
_TIMEOUT_S = 240  # For the multi-process run; far above its usual time.
_DEVICES_PER_PROCESS = 2
# The tiny architecture of test_train.py, as config overrides.
_TINY = {
    'model.z_dim': 8,
    'model.gen_widths': (8, 8, 4),
    'model.critic_widths': (4, 4, 8),
    'model.critic_strides': (2, 2, 2),
    # XLA's convolutions compile faster; tiny, they run fast enough.
    'model.conv_impl': 'xla',
    'batch_size': 4,
    'n_critic': 2,
    'shuffle_buffer': 100,
    'num_samples': 4,
    'log_every_steps': 1,
    'num_steps': 100_000,  # Until the SIGTERM.
    'checkpoint_every_steps': 100_000,
}
_SIGTERM_AFTER_STEPS = 3


def tiny_config(**overrides):
  """The smoke config with _TINY and `overrides` ('a.b' keys) applied."""
  config = smoke.get_config()
  for key, value in {**_TINY, **overrides}.items():
    *parents, name = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def tiny_flags():
  """wgan_jax.main flags for the config tiny_config() returns."""
  flags = ['--config=configs/smoke.py']
  for key, value in _TINY.items():
    if isinstance(value, tuple):
      value = '(' + ','.join(map(str, value)) + ')'
    flags.append(f'--config.{key}={value}')
  return flags


def subprocess_env(**extra):
  """This environment for CPU subprocesses with their own device count."""
  env = dict(os.environ)
  # conftest's device-count flag would fight JAX_NUM_CPU_DEVICES.
  env['XLA_FLAGS'] = ' '.join(
      f for f in env.get('XLA_FLAGS', '').split()
      if not f.startswith('--xla_force_host_platform_device_count'))
  env.update(
      JAX_DISABLE_MOST_OPTIMIZATIONS='true',  # As conftest, for speed.
      LOCAL_DEVICES=str(_DEVICES_PER_PROCESS),
      PYTHON=sys.executable,
      TF_CPP_MIN_LOG_LEVEL='2')
  env.update(extra)
  return env


def read(path):
  with open(path) as f:
    return f.read()


def kill_group(proc):
  """Ends a subprocess started with start_new_session, and its children."""
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def child_with_arg(parent_pid, arg):
  """The pid of the child of `parent_pid` with `arg` on its command line."""
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    try:
      stat = read(f'/proc/{name}/stat')
      cmdline = read(f'/proc/{name}/cmdline').split('\0')
    except OSError:
      continue
    if int(stat.rsplit(')', 1)[1].split()[1]) == parent_pid and arg in cmdline:
      return int(name)
  return None


def pre_norm_leaf(path, config) -> bool:
  """Whether a state leaf is one a batch norm makes nearly free.

  The generator's deconv biases in front of a batch norm have a zero
  gradient, whose float noise Adam scales up to +-learning_rate per step,
  differently for each reduction order; the running means after them carry
  the same noise. The networks' outputs do not depend on either.

  Args:
    path: a key path into the train state.
    config: the run's config.

  Returns:
    True for those leaves (parameters and their optimizer moments).
  """
  name = jax.tree_util.keystr(path)
  if not name.startswith('.gen'):
    return False
  blocks = range(len(config.model.gen_widths) - 1)
  return (any(f"['deconv{i}']['bias']" in name for i in blocks) or
          any(f"['BatchNorm_{i + 1}']['mean']" in name for i in blocks))


def compare_states(actual, expected, config, steps, rtol=1e-4):
  """Asserts equal states up to float noise; returns the largest gaps.

  Each leaf is compared at its own scale: the largest difference over its
  largest magnitude must be below `rtol` (single elements that cancel to
  near zero are compared at the leaf's scale, not their own).

  Args:
    actual: a train state.
    expected: the train state it should equal.
    config: the run's config.
    steps: how many steps both ran, for the noise bound of pre-norm leaves.
    rtol: the bound on each other leaf's relative difference.

  Returns:
    (largest absolute parameter difference outside the pre-norm leaves,
    largest relative difference of any other leaf, largest absolute
    difference of a pre-norm leaf).
  """
  params = relative = free = 0.0
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(actual)[0],
                          jax.tree.leaves(expected)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    gap = float(np.max(np.abs(a - b)))
    if pre_norm_leaf(path, config):
      free = max(free, gap)
      limit = 2 * config.optimizer.learning_rate * steps
      if '.params' in jax.tree_util.keystr(path):
        assert gap <= limit, (jax.tree_util.keystr(path), gap, limit)
      continue
    if '.params' in jax.tree_util.keystr(path):
      params = max(params, gap)
    scale = float(np.max(np.abs(b)))
    relative = max(relative, gap / scale if scale else gap)
    assert gap <= rtol * scale, (jax.tree_util.keystr(path), gap, scale)
  return params, relative, free


def one_process_runner(config, mesh):
  """What 2 processes compute, in this one process: the same global batches.

  Process p's part of each global batch comes from its own part of the
  split, and the parts lie in process order along the batch.

  Args:
    config: the run's config.
    mesh: this process's mesh.

  Returns:
    run(steps, order=(0, 1)) -> (final state, metrics of each step); order
    is the processes' parts in batch order, (1, 0) swaps them.
  """
  gen, critic = models.create_models(config.model)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  init = jax.jit(functools.partial(train.init_state, config, gen, critic),
                 out_shardings=replicated)
  step_fn = train.jit_train_step(train.make_train_step(config, gen, critic),
                                 mesh)
  local = config.batch_size // 2

  def run(steps, order=(0, 1)):
    state = init(jax.random.PRNGKey(config.seed))
    streams = [input_pipeline.as_numpy_iterator(
        input_pipeline.create_train_dataset(
            config.dataset, config.split, config.n_critic * local,
            data_dir=config.data_dir, seed=config.seed,
            shuffle_buffer=config.shuffle_buffer, process_index=p,
            process_count=2)) for p in order]
    history = []
    for _ in range(steps):
      parts = [next(s)['image'].reshape((config.n_critic, local, 32, 32, 3))
               for s in streams]
      state, metrics = step_fn(state, np.concatenate(parts, axis=1))
      history.append(jax.device_get(metrics))
    return state, history

  return run


def restore_here(workdir, config, mesh, step):
  """A checkpoint of `workdir`, restored on this process's mesh."""
  gen, critic = models.create_models(config.model)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shapes = jax.eval_shape(functools.partial(train.init_state, config, gen,
                                            critic), jax.random.PRNGKey(0))
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  return checkpoints.restore(
      manager, checkpoints.abstract_like(shapes, replicated), step)


class TwoProcessRunTest(absltest.TestCase):
  """Checks one `launch/local.sh 2` run stopped by a SIGTERM to process 1."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp)
    cls.workdir = os.path.join(cls.tmp, 'run')
    log = os.path.join(cls.tmp, 'local.log')
    with open(log, 'w') as f:
      proc = subprocess.Popen(
          [_LOCAL_SH, '2', f'--workdir={cls.workdir}'] + tiny_flags(),
          cwd=_REPO, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT,
          start_new_session=True)
    cls.addClassCleanup(kill_group, proc)
    cls.problem = None
    metrics = os.path.join(cls.workdir, 'metrics.jsonl')
    deadline = time.monotonic() + _TIMEOUT_S
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() < deadline:
      if (os.path.exists(metrics) and
          len(read(metrics).splitlines()) >= _SIGTERM_AFTER_STEPS):
        break
      time.sleep(0.2)
    process_1 = child_with_arg(proc.pid, '--process_id=1')
    if process_1 is None:
      cls.problem = 'no process 1 running when training should have started'
    else:
      os.kill(process_1, signal.SIGTERM)  # Process 1 only.
      try:
        proc.wait(max(1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        cls.problem = f'still running after {_TIMEOUT_S} s'
        kill_group(proc)
    cls.wall_s = time.monotonic() - t0
    cls.returncode = proc.returncode
    cls.output = read(log)

  def assert_run_ok(self):
    if self.problem or self.returncode:
      self.fail(f'{self.problem or ""} (exit status {self.returncode}); '
                f'local.sh output ends:\n{self.output[-4000:]}')

  def stopped_step(self):
    """The step both processes say they stopped at."""
    marker = 'Preemption (SIGTERM): checkpointing step '
    steps = [int(line.split(marker)[1].split()[0])
             for line in self.output.splitlines() if marker in line]
    self.assertLen(steps, 2, 'one line from each process')
    self.assertEqual(steps[0], steps[1])
    return steps[0]

  def test_sigterm_to_one_process_stops_both_at_one_step(self):
    self.assert_run_ok()
    step = self.stopped_step()
    self.assertBetween(step, _SIGTERM_AFTER_STEPS, _TINY['num_steps'] - 1)
    manager = checkpoints.create_manager(self.workdir)
    self.assertEqual(manager.all_steps(), [step])
    self.assertIn('process 0 of 2; 4 devices', self.output)
    print(f'\nSIGTERM to process 1 after step {_SIGTERM_AFTER_STEPS} was '
          f'logged: both processes checkpointed step {step} and exited 0; '
          f'the run took {self.wall_s:.0f} s')

  def test_same_state_as_one_process_with_the_same_global_batches(self):
    self.assert_run_ok()
    step = self.stopped_step()
    config = tiny_config()
    # Restored in this one process, on 2 devices instead of 4.
    mesh = train.create_mesh(jax.devices()[:2])
    restored = restore_here(self.workdir, config, mesh, step)
    self.assertEqual(int(restored.step), step)
    run = one_process_runner(config, mesh)
    reference, history = run(step)
    params, relative, free = compare_states(restored, reference, config, step)
    print(f'\n2 processes x 2 devices vs 1 process x 2 devices, {step} steps: '
          f'max |parameter difference| {params:.2g}, max relative state '
          f'difference {relative:.2g}; pre-norm biases (zero gradient) '
          f'{free:.2g}')
    # Only process 0 writes the metrics; they are the reference's.
    with open(os.path.join(self.workdir, 'metrics.jsonl')) as f:
      logged = [json.loads(line) for line in f]
    self.assertEqual([r['step'] for r in logged], list(range(1, step + 1)))
    for record, metrics in zip(logged, history):
      for key in train.METRICS:
        np.testing.assert_allclose(record[key], metrics[key], rtol=2e-4,
                                   atol=1e-5, err_msg=key)
    # The comparison can fail: the processes' parts in the other order give
    # other batches and another state.
    swapped, _ = run(step, order=(1, 0))
    with self.assertRaises(AssertionError):
      compare_states(swapped, reference, config, step)

  def test_relaunch_in_one_process_resumes(self):
    self.assert_run_ok()
    step = self.stopped_step()
    workdir = os.path.join(self.tmp, 'relaunch')
    shutil.copytree(self.workdir, workdir)
    # A SIGTERM to the relaunch at its first step stops it there.
    watch = distributed.PreemptionWatch()
    self.addCleanup(watch.close)

    def should_stop(done):
      if done == step + 1:
        os.kill(os.getpid(), signal.SIGTERM)
      return watch.should_stop(done)

    state = train.train_and_evaluate(tiny_config(), workdir,
                                     should_stop=should_stop)
    self.assertEqual(int(state.step), step + 1)
    manager = checkpoints.create_manager(workdir)
    self.assertEqual(manager.all_steps(), [step, step + 1])


class LocalLaunchTest(absltest.TestCase):

  def test_launch_fails_and_stops_the_others_when_one_process_fails(self):
    with tempfile.TemporaryDirectory() as tmp:
      fake = os.path.join(tmp, 'python')
      with open(fake, 'w') as f:
        f.write('#!/bin/sh\n'
                'case "$*" in *--process_id=1*) exit 3;; esac\n'
                'exec sleep 60\n')
      os.chmod(fake, 0o755)
      t0 = time.monotonic()
      proc = subprocess.Popen(
          [_LOCAL_SH, '3', '--workdir=x'], env=subprocess_env(
              PYTHON=fake, PORT='1', GRACE_S='5'),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          start_new_session=True)
      self.addCleanup(kill_group, proc)
      output = proc.communicate(timeout=30)[0]
      self.assertEqual(proc.returncode, 1, output)
      self.assertLess(time.monotonic() - t0, 20)  # The sleepers were ended.
      self.assertIn('process 1 (pid', output)
    usage = subprocess.run([_LOCAL_SH, 'x'], capture_output=True, check=False)
    self.assertEqual(usage.returncode, 2)


class PreemptionWatchTest(absltest.TestCase):

  def test_catches_sigterm_in_one_process(self):
    before = signal.getsignal(signal.SIGTERM)
    watch = distributed.PreemptionWatch()
    try:
      self.assertFalse(watch.should_stop(1))
      os.kill(os.getpid(), signal.SIGTERM)
      self.assertTrue(watch.should_stop(2))
    finally:
      watch.close()
    self.assertEqual(signal.getsignal(signal.SIGTERM), before)


class DataPartsTest(absltest.TestCase):

  def test_parts_are_disjoint_and_cover_the_split(self):
    name, split = 'imagenet_resized/32x32', 'train[:25]'
    whole = input_pipeline.as_numpy_iterator(
        input_pipeline.create_eval_dataset(name, split, 25))
    whole = sorted(image.tobytes() for image in next(whole)['image'])
    for count in (2, 3):
      indices, images = [], []
      for i in range(count):
        part = input_pipeline.process_split(split, i, count)
        size = input_pipeline.num_examples(name, part, None)
        # One epoch of the train stream of process i ...
        stream = input_pipeline.as_numpy_iterator(
            input_pipeline.create_train_dataset(
                name, split, size, shuffle_buffer=100, process_index=i,
                process_count=count))
        images += [image.tobytes() for image in next(stream)['image']]
        # ... and where its examples sit in the split.
        passes = input_pipeline.as_numpy_iterator(
            input_pipeline.create_eval_dataset(
                name, split, 25, process_index=i, process_count=count))
        indices.append(set(next(passes)['index'].tolist()))
      self.assertEqual(sorted(images), whole, f'{count} processes')
      self.assertEqual(set.union(*indices), set(range(25)))
      self.assertEqual(sum(map(len, indices)), 25)  # Hence disjoint.


class InitializeTest(absltest.TestCase):

  @mock.patch.object(jax.distributed, 'initialize')
  def test_plain_start_does_not_initialize(self, initialize):
    with mock.patch.dict(os.environ, {'SLURM_NTASKS': '4',
                                      'SLURM_STEP_NUM_TASKS': '1'}):
      self.assertFalse(distributed.initialize())
    initialize.assert_not_called()

  @mock.patch.object(jax.distributed, 'initialize')
  def test_flags_initialize_without_detection(self, initialize):
    self.assertTrue(distributed.initialize(None, '127.0.0.1:1234', 2, 1))
    initialize.assert_called_once_with(
        coordinator_address='127.0.0.1:1234', num_processes=2, process_id=1,
        coordinator_bind_address='127.0.0.1:1234',
        cluster_detection_method='deactivate')

  @mock.patch.object(jax.distributed, 'initialize')
  def test_slurm_step_initializes_from_the_environment(self, initialize):
    with mock.patch.dict(os.environ, {'SLURM_STEP_NUM_TASKS': '8'}):
      self.assertTrue(distributed.initialize())
    initialize.assert_called_once_with()

  def test_nodistributed_with_flags_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'nodistributed'):
      distributed.initialize(False, num_processes=2)


if __name__ == '__main__':
  absltest.main()
