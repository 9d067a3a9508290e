"""Benchmarks the train step: images/s, FLOP/s, input pipeline, compile time.

  python -m wgan_jax.benchmark --config=configs/default.py [--json=FILE] \
      [--peer=../shared/bench/torch_peer.py] [--rounds=5]

Times, after compilation, a critic step, a generator step and a full
iteration (n_critic critic steps + 1 generator step, one compiled call) on
random data, each as the median and spread over `rounds` rounds; FLOPs per
call come from XLA's cost analysis. With --peer, the PyTorch peer runs the
same architecture in another process, interleaved round by round with ours
so that both see the same machine load, and the throughput ratio is added.
"""

import json
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from ml_collections import config_flags

from wgan_jax import fileio
from wgan_jax import input_pipeline
from wgan_jax import models
from wgan_jax import train

config_flags.DEFINE_config_file('config', None, 'Config file.',
                                lock_config=True)
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')
_PEER = flags.DEFINE_string('peer', None, 'Path of torch_peer.py to compare.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds of each kind.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Calls per round (median).')
_INPUT_BATCHES = flags.DEFINE_integer(
    'input_batches', 20, 'Batches read to time the input pipeline; 0 skips.')


def _flops(compiled) -> float | None:
  """FLOPs of one call from XLA's cost analysis, if the backend gives it."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def _time(fn, repeats: int) -> float:
  """Median seconds of `repeats` calls, each waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
  """Achieved GFLOP/s of one float32 [size, size] matmul on one device.

  The reference for what the train step achieves: on CPU it is the sgemm
  rate of XLA's (Eigen's) GEMM on all cores, on GPUs and TPUs the fp32
  matmul rate.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), np.float32)
  b = jax.random.normal(key_b, (size, size), np.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(matmul(a, b))
  return 2 * size**3 / _time(lambda: matmul(a, b), repeats) / 1e9


def _summary(times, images, flops=None) -> dict:
  med = statistics.median(times)
  out = dict(median_s=med, min_s=min(times), max_s=max(times),
             images_per_sec=images / med)
  if flops:
    out.update(gflops_per_call=flops / 1e9, achieved_gflops=flops / med / 1e9)
  return out


def build_steps(config):
  """Compiled critic step, generator step and full iteration, with inputs.

  Returns:
    dict name -> (call, flops, compile seconds); each call runs the step on
    fixed random inputs and returns its outputs. The state is not donated
    here, so every call starts from the same state.
  """
  gen, critic = models.create_models(config.model)
  mesh = train.create_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh,
                                    jax.sharding.PartitionSpec(None, 'data'))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  state = jax.jit(lambda k: train.init_state(config, gen, critic, k),
                  out_shardings=replicated)(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  real = rng.uniform(-1, 1, (config.n_critic, config.batch_size, 32, 32, 3))
  real = jax.device_put(real.astype(np.float32), data)
  key = jax.random.PRNGKey(1)
  critic_update, gen_update = train.make_update_fns(config, gen, critic)
  step = train.make_train_step(config, gen, critic)
  # jit follows the shardings the inputs already have.
  fns = {
      'critic_step': (jax.jit(critic_update),
                      (state, (jax.device_put(real[0], batch), key))),
      'generator_step': (jax.jit(gen_update), (state, key)),
      'iteration': (jax.jit(step), (state, real)),
  }
  out = {}
  for name, (fn, args) in fns.items():
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    call = lambda c=compiled, a=args: c(*a)
    jax.block_until_ready(call())  # Warm-up.
    out[name] = (call, _flops(compiled), seconds)
  return out


def time_input(config, batches: int) -> float | None:
  """Images/s of the training input pipeline on the configured dataset."""
  if batches <= 0:
    return None
  ds = input_pipeline.create_train_dataset(
      config.dataset, config.split, config.batch_size,
      data_dir=config.data_dir, shuffle_buffer=config.shuffle_buffer)
  it = input_pipeline.as_numpy_iterator(ds)
  next(it)  # Fills the shuffle buffer.
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * config.batch_size / (time.perf_counter() - start)


class Peer:
  """The PyTorch peer in --serve mode, matched to a config."""

  def __init__(self, path: str, config):
    m = config.model
    ints = lambda v: ','.join(str(int(x)) for x in v)
    cmd = [sys.executable, path, '--serve',
           '--critic-widths', ints(m.critic_widths),
           '--critic-strides', ints(m.critic_strides),
           '--critic-kernel', str(m.critic_kernel),
           '--critic-norm', m.critic_norm, '--gen-widths', ints(m.gen_widths),
           '--z-dim', str(m.z_dim), '--batch', str(config.batch_size),
           '--n-critic', str(config.n_critic),
           '--gp-weight', str(config.gp_weight),
           '--lr', str(config.optimizer.learning_rate),
           '--beta1', str(config.optimizer.b1),
           '--beta2', str(config.optimizer.b2)]
    if m.gen_kernel != 4:
      raise ValueError('The peer only has 4x4 generator kernels.')
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.info = json.loads(self.proc.stdout.readline())

  def time(self, kind: str, n: int) -> float:
    self.proc.stdin.write(f'{kind} {n}\n')
    self.proc.stdin.flush()
    return statistics.median(json.loads(self.proc.stdout.readline())['times'])

  def close(self):
    self.proc.stdin.write('quit\n')
    self.proc.stdin.flush()
    self.proc.wait(timeout=60)


def run(config, rounds: int = 5, repeats: int = 3, peer_path=None,
        input_batches: int = 20) -> dict:
  """Runs the benchmark; returns the results dict."""
  devices = jax.devices()
  result = dict(device_kind=devices[0].device_kind, device_count=len(devices),
                backend=jax.default_backend(), jax=jax.__version__,
                batch_size=config.batch_size, n_critic=config.n_critic,
                conv_impl=models.conv.resolve_impl(config.model.conv_impl),
                dtype=config.model.get('dtype', 'float32'),
                critic_widths=list(config.model.critic_widths),
                gen_widths=list(config.model.gen_widths))
  steps = build_steps(config)
  result['compile_s'] = {k: v[2] for k, v in steps.items()}
  flops = {k: v[1] for k, v in steps.items()}
  if flops['critic_step'] and flops['generator_step']:
    # XLA's cost analysis counts a loop body once; the iteration scans over
    # n_critic critic steps.
    flops['iteration'] = (config.n_critic * flops['critic_step']
                          + flops['generator_step'])
  peer = Peer(peer_path, config) if peer_path else None
  ours = {k: [] for k in steps}
  theirs = {'critic_step': [], 'generator_step': []}
  peaks = []
  for r in range(rounds):
    # In every round, so the reference sees the same machine load.
    peaks.append(matmul_gflops(repeats=repeats))
    for name, (call, _, _) in steps.items():
      ours[name].append(_time(call, repeats))
    if peer:
      theirs['critic_step'].append(peer.time('critic', repeats))
      theirs['generator_step'].append(peer.time('gen', repeats))
    logging.info('round %d: %s', r, {k: f'{v[-1]:.3f}s' for k, v in
                                     ours.items()})
  b, n = config.batch_size, config.n_critic
  images = dict(critic_step=b, generator_step=b, iteration=n * b)
  result['steps'] = {k: _summary(v, images[k], flops[k])
                     for k, v in ours.items()}
  result['matmul_gflops'] = statistics.median(peaks)
  for s in result['steps'].values():
    if 'achieved_gflops' in s:
      s['fraction_of_matmul'] = s['achieved_gflops'] / result['matmul_gflops']
  if peer:
    peer.close()
    result['peer'] = dict(peer.info)
    result['peer']['steps'] = {k: _summary(v, b) for k, v in theirs.items()}
    # The peer's iteration, from its medians, as torch_peer.py computes it.
    it = (n * statistics.median(theirs['critic_step'])
          + statistics.median(theirs['generator_step']))
    result['peer']['steps']['iteration'] = dict(median_s=it,
                                                images_per_sec=n * b / it)
    result['ratio'] = {
        k: result['steps'][k]['images_per_sec']
        / result['peer']['steps'][k]['images_per_sec']
        for k in ('critic_step', 'generator_step', 'iteration')}
  result['input_images_per_sec'] = time_input(config, input_batches)
  result['peak_rss_mib'] = fileio.peak_rss_mib()
  return result


def format_table(result: dict) -> str:
  """A short human-readable table of the results."""
  lines = [f'{result["device_count"]} x {result["device_kind"]} '
           f'({result["backend"]}), batch {result["batch_size"]}, '
           f'conv {result["conv_impl"]}',
           f'{"":16}{"median s":>10}{"img/s":>9}{"GFLOP/s":>9}'
           f'{"peer img/s":>12}{"ratio":>7}']
  for name, s in result['steps'].items():
    peer = result.get('peer', {}).get('steps', {}).get(name)
    lines.append(
        f'{name:16}{s["median_s"]:10.3f}{s["images_per_sec"]:9.1f}'
        f'{s.get("achieved_gflops", float("nan")):9.1f}'
        + (f'{peer["images_per_sec"]:12.1f}{result["ratio"][name]:7.2f}'
           if peer else ''))
  lines.append(f'float32 matmul 2048^3: {result["matmul_gflops"]:.1f} '
               'GFLOP/s; critic step at ' + (
                   f'{result["steps"]["critic_step"]["fraction_of_matmul"]:.0%}'
                   if 'fraction_of_matmul' in result['steps']['critic_step']
                   else 'n/a') + ' of it')
  if result.get('input_images_per_sec'):
    lines.append(f'input pipeline: {result["input_images_per_sec"]:.0f} img/s')
  lines.append('compile s: ' + ', '.join(
      f'{k} {v:.1f}' for k, v in result['compile_s'].items()))
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  input_pipeline.hide_accelerators_from_tf()
  result = run(flags.FLAGS.config, _ROUNDS.value, _REPEATS.value, _PEER.value,
               _INPUT_BATCHES.value)
  result['config'] = flags.FLAGS.config.to_dict()
  if _JSON.value:
    fileio.atomic_write_json(_JSON.value, result)
  print(format_table(result))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
