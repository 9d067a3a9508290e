"""WGAN-GP training: train state, the jitted data-parallel step, the loop.

Importable without flags; `wgan_jax.main` is the command line.
"""

import functools
import math
import os
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wgan_jax import checkpoints
from wgan_jax import distributed
from wgan_jax import fileio
from wgan_jax import input_pipeline
from wgan_jax import losses
from wgan_jax import models
from wgan_jax import writers

# Metrics the train step returns; the critic ones are means over the
# n_critic critic updates of the step.
METRICS = ('critic_loss', 'wasserstein', 'gradient_penalty', 'grad_norm',
           'gen_loss')
OPTIMIZERS = ('adam', 'rmsprop')


@flax.struct.dataclass
class NetState:
  """One network's parameters, batch-norm statistics and optimizer state."""
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. Random keys derive from seed and step."""
  step: jnp.ndarray
  gen: NetState
  critic: NetState


def validate_config(config: ml_collections.ConfigDict, device_count: int):
  """Raises ValueError naming the problem and the fix."""
  if config.loss not in losses.LOSSES:
    raise ValueError(
        f'config.loss={config.loss!r}; use one of {losses.LOSSES}.')
  if config.model.critic_norm not in models.NORMS:
    raise ValueError(f'config.model.critic_norm={config.model.critic_norm!r}; '
                     f'use one of {models.NORMS}.')
  models.compute_dtype(config.model.get('dtype', 'float32'))
  arch = config.model.get('arch', 'dcgan')
  if arch not in models.ARCHS:
    raise ValueError(f'config.model.arch={arch!r}; use one of '
                     f'{models.ARCHS}.')
  if arch == 'mlp' and config.model.get('data_dim', 0) < 1:
    raise ValueError(
        'config.model.arch=\'mlp\' needs config.model.data_dim, the size of '
        'each example (2 for the toy mixtures); see configs/toy.py.')
  if arch == 'mlp' and config.model.critic_norm != 'none':
    raise ValueError(
        f'config.model.critic_norm={config.model.critic_norm!r}, but the MLP '
        'critic has no norm layers; set config.model.critic_norm=\'none\'.')
  optimizer = config.optimizer.get('name', 'adam')
  if optimizer not in OPTIMIZERS:
    raise ValueError(f'config.optimizer.name={optimizer!r}; use one of '
                     f'{OPTIMIZERS}.')
  if config.loss == 'wgan-clip' and not config.get('clip_value', 0) > 0:
    raise ValueError(
        f'config.loss=\'wgan-clip\' needs config.clip_value > 0, got '
        f'{config.get("clip_value")!r}; the WGAN paper uses 0.01.')
  if config.batch_size % device_count:
    raise ValueError(
        f'config.batch_size={config.batch_size} is not divisible by the '
        f'{device_count} devices; set --config.batch_size to a multiple of '
        f'{device_count}.')
  if config.batch_size % jax.process_count():
    raise ValueError(
        f'config.batch_size={config.batch_size} is not divisible by the '
        f'{jax.process_count()} processes.')
  if config.n_critic < 1:
    raise ValueError(f'config.n_critic={config.n_critic} must be at least 1.')
  if config.keep_checkpoints < 1:
    raise ValueError(f'config.keep_checkpoints={config.keep_checkpoints} '
                     'must be at least 1: orbax would delete every '
                     'checkpoint, older ones included.')


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over the given devices (all of them by default)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def create_optimizer(config: ml_collections.ConfigDict,
                     updates_per_step: int = 1):
  """The configured optimizer; one instance each for generator and critic.

  Args:
    config: the run's config. config.optimizer.name 'adam' uses b1 and b2;
      'rmsprop' (the weight-clipped WGAN's choice) ignores them. With
      config.optimizer.linear_decay the learning rate falls linearly to 0
      at config.num_steps, as in the WGAN-GP authors' code.
    updates_per_step: the network's updates per train step (n_critic for
      the critic), so that a decay ends at the last step for both.

  Returns:
    An optax GradientTransformation.
  """
  opt = config.optimizer
  lr = opt.learning_rate
  # Configs saved before these keys existed used Adam without decay.
  if opt.get('linear_decay', False):
    lr = optax.linear_schedule(lr, 0.0,
                               config.num_steps * updates_per_step)
  if opt.get('name', 'adam') == 'rmsprop':
    # decay 0.99 and eps 1e-8 are PyTorch's RMSprop defaults, which the WGAN
    # authors' code ran with.
    return optax.rmsprop(lr, decay=0.99, eps=1e-8)
  return optax.adam(lr, b1=opt.b1, b2=opt.b2)


def _apply_gen(gen, params, batch_stats, z):
  """Generates with batch statistics; returns (images, updated statistics).

  A generator without batch norm (the MLP) has empty statistics, which pass
  through unchanged.
  """
  images, updates = gen.apply({'params': params, 'batch_stats': batch_stats},
                              z, train=True, mutable=['batch_stats'])
  return images, updates.get('batch_stats', batch_stats)


def _apply_critic(critic, params, batch_stats, x, train=True):
  """Scores images; returns (scores, updated statistics).

  Only a batch-norm critic has statistics; for the others `batch_stats` is an
  empty dict and passes through unchanged.
  """
  if not batch_stats:
    return critic.apply({'params': params}, x, train=train), batch_stats
  variables = {'params': params, 'batch_stats': batch_stats}
  if not train:
    return critic.apply(variables, x, train=False), batch_stats
  scores, updates = critic.apply(variables, x, train=True,
                                 mutable=['batch_stats'])
  return scores, updates['batch_stats']


def init_state(config, gen, critic, key) -> TrainState:
  """Initial parameters and optimizer states for both networks."""
  k_gen, k_critic = jax.random.split(key)
  z = jnp.zeros((2, config.model.z_dim))
  gen_vars = gen.init(k_gen, z, train=False)
  critic_vars = critic.init(
      k_critic, jnp.zeros((2,) + models.data_shape(config.model)), train=False)
  tx = create_optimizer(config)

  def net(variables, clip=False):
    params = variables['params']
    if clip:
      # So the critic satisfies the constraint from its first use on.
      params = losses.clip_weights(params, config.clip_value)
    return NetState(params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))

  return TrainState(step=jnp.zeros((), jnp.int32), gen=net(gen_vars),
                    critic=net(critic_vars,
                               clip=config.loss == 'wgan-clip'))


def make_update_fns(config, gen, critic):
  """The two updates a train step is made of, unjitted.

  Returns:
    critic_update(state, (real [B, ...], key)) -> (state, metrics) and
    gen_update(state, key) -> (state, generator loss); real examples are
    [32, 32, 3] images (DCGAN) or [data_dim] vectors (MLP).
  """
  gen_tx = create_optimizer(config)
  critic_tx = create_optimizer(config, config.n_critic)
  z_dim = config.model.z_dim
  wgan = config.loss in losses.WASSERSTEIN_LOSSES
  penalised, clipped = config.loss == 'wgan-gp', config.loss == 'wgan-clip'

  def critic_update(state, inputs):
    real, key = inputs
    k_z, k_eps = jax.random.split(key)
    z = jax.random.normal(k_z, (real.shape[0], z_dim))
    # The generator normalises with this batch's statistics, as in the
    # authors' code; only generator updates move its running averages.
    fake, _ = _apply_gen(gen, state.gen.params, state.gen.batch_stats, z)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params):
      stats = state.critic.batch_stats
      real_scores, stats = _apply_critic(critic, params, stats, real)
      fake_scores, stats = _apply_critic(critic, params, stats, fake)
      metrics = {'wasserstein': jnp.mean(real_scores) - jnp.mean(fake_scores)}
      critic_loss = losses.wgan_critic_loss if wgan else losses.gan_critic_loss
      loss = critic_loss(real_scores, fake_scores)
      if penalised:
        # Batch-norm statistics from the penalty's pass are discarded.
        score_fn = lambda x: _apply_critic(critic, params, stats, x)[0]
        penalty, norms = losses.gradient_penalty(score_fn, real, fake, k_eps)
        loss += config.gp_weight * penalty
        metrics.update(gradient_penalty=penalty, grad_norm=jnp.mean(norms))
      else:
        metrics.update(gradient_penalty=jnp.zeros(()), grad_norm=jnp.zeros(()))
      metrics['critic_loss'] = loss
      return loss, (stats, metrics)

    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(
        state.critic.params)
    updates, opt_state = critic_tx.update(grads, state.critic.opt_state,
                                          state.critic.params)
    params = optax.apply_updates(state.critic.params, updates)
    if clipped:
      params = losses.clip_weights(params, config.clip_value)
    net = NetState(params=params, batch_stats=stats, opt_state=opt_state)
    return state.replace(critic=net), metrics

  def gen_update(state, key):
    z = jax.random.normal(key, (config.batch_size, z_dim))

    def loss_fn(params):
      fake, stats = _apply_gen(gen, params, state.gen.batch_stats, z)
      scores, _ = _apply_critic(critic, state.critic.params,
                                state.critic.batch_stats, fake)
      if wgan:
        return losses.wgan_generator_loss(scores), stats
      return losses.gan_generator_loss(scores), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.gen.params)
    updates, opt_state = gen_tx.update(grads, state.gen.opt_state,
                                       state.gen.params)
    net = NetState(params=optax.apply_updates(state.gen.params, updates),
                   batch_stats=stats, opt_state=opt_state)
    return state.replace(gen=net), loss

  return critic_update, gen_update


def make_train_step(config, gen, critic):
  """Builds the (unjitted) train step for the configured objective.

  Returns:
    train_step(state, real) -> (state, metrics): `real` holds n_critic fresh
    real batches [n_critic, B, ...] (see make_update_fns); the step runs one
    critic update on each, then one generator update on fresh noise.
  """
  critic_update, gen_update = make_update_fns(config, gen, critic)

  def train_step(state, real):
    # Keys from (seed, step) alone: a resumed run draws what a straight run
    # would, and no key needs checkpointing.
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    k_critic, k_gen = jax.random.split(key)
    keys = jax.random.split(k_critic, real.shape[0])
    state, metrics = jax.lax.scan(critic_update, state, (real, keys))
    metrics = jax.tree.map(jnp.mean, metrics)
    state, metrics['gen_loss'] = gen_update(state, k_gen)
    return state.replace(step=state.step + 1), metrics

  return train_step


def jit_train_step(train_step, mesh):
  """Data parallel: the batch is split over the mesh, the state replicated.

  Under jit with a sharded global batch, XLA averages the gradients across
  devices itself (what pmap's explicit pmean did) and batch statistics are
  those of the global batch.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, 'data'))
  return jax.jit(train_step, in_shardings=(replicated, data),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_sampler(config, gen):
  """A jitted function: generator params and stats -> fixed-noise samples."""
  z = jax.random.normal(jax.random.PRNGKey(config.seed + 1),
                        (config.num_samples, config.model.z_dim))

  @jax.jit
  def sample(params, batch_stats):
    # Batch statistics of the sample batch, as during training.
    return _apply_gen(gen, params, batch_stats, z)[0]

  return sample


def is_time(step: int, every: int, last: int) -> bool:
  """True every `every` steps and at the last step."""
  return step == last or (every > 0 and step % every == 0)


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def _window_means(history):
  """Averages the metrics of the steps in the log window, on the host."""
  history = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str,
    should_stop: Callable[[int], bool] | None = None) -> TrainState:
  """Trains (or resumes) in `workdir` until `config.num_steps`.

  Args:
    config: the run's configuration (see configs/default.py).
    workdir: where checkpoints, config.json, metrics, TensorBoard events,
      samples and the loss plot go. A workdir with a checkpoint resumes.
    should_stop: called with each completed step, in order, on every
      process; True (on all processes at the same step) saves a checkpoint
      there and ends the run early, as after a preemption notice (see
      distributed.PreemptionWatch).

  Returns:
    The final train state.
  """
  # ---- Devices and checks ----
  mesh = create_mesh()
  validate_config(config, mesh.size)
  if config.model.get('arch', 'dcgan') != 'dcgan':
    raise ValueError(
        f'config.model.arch={config.model.arch!r} trains on the toy mixtures '
        'only: run `python -m wgan_jax.mode_coverage`, or use a DCGAN config '
        'for images.')
  is_main = jax.process_index() == 0
  logging.info('process %d of %d; %d devices: %s', jax.process_index(),
               jax.process_count(), mesh.size, mesh.devices.tolist())
  # Fail on missing data before anything is written.
  input_pipeline.num_examples(config.dataset, config.split, config.data_dir)
  os.makedirs(workdir, exist_ok=True)

  # ---- Models, state, checkpoints ----
  gen, critic = models.create_models(config.model)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  init = jax.jit(functools.partial(init_state, config, gen, critic),
                 out_shardings=replicated)
  state = init(jax.random.PRNGKey(config.seed))
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  distributed.check_same_latest_step(manager.latest_step(), manager.directory)
  if manager.latest_step() is not None:
    checkpoints.check_resumable(workdir, config)
    state = checkpoints.restore(
        manager, checkpoints.abstract_like(state, replicated))
    logging.info('Resuming from the checkpoint at step %d in %s.',
                 int(state.step), manager.directory)
  start = int(state.step)
  num_params = {name: sum(x.size for x in jax.tree.leaves(net.params))
                for name, net in (('gen', state.gen), ('critic', state.critic))}
  logging.info('parameters: generator %d, critic %d', num_params['gen'],
               num_params['critic'])

  if start >= config.num_steps:
    logging.info('Step %d already reached config.num_steps=%d; nothing to do.',
                 start, config.num_steps)
    return state
  if is_main:
    # Written anew each start that trains (only resumable settings can
    # differ), so it always describes the run; a failed first start blocks
    # nothing.
    checkpoints.save_config(workdir, config)

  # ---- Input ----
  local_batch = config.batch_size // jax.process_count()
  per_step = config.n_critic * local_batch
  dataset = input_pipeline.create_train_dataset(
      config.dataset, config.split, per_step, data_dir=config.data_dir,
      seed=config.seed, shuffle_buffer=config.shuffle_buffer,
      start_example=start * per_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  batches = input_pipeline.as_numpy_iterator(dataset)
  data_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, 'data'))

  def next_real():
    images = next(batches)['image']
    images = images.reshape((config.n_critic, local_batch) + images.shape[1:])
    return jax.make_array_from_process_local_data(data_sharding, images)

  # ---- Step, writers ----
  train_step = jit_train_step(make_train_step(config, gen, critic), mesh)
  sample = make_sampler(config, gen)
  writer = writers.MetricWriter(workdir, enabled=is_main, start_step=start)
  real = next_real()
  t0 = time.perf_counter()
  compiled = train_step.lower(state, real).compile()
  logging.info('Compiled the train step in %.1f s.', time.perf_counter() - t0)

  # ---- Loop ----
  history, window_start, t_window = [], start, time.perf_counter()
  for step in range(start + 1, config.num_steps + 1):
    state, metrics = compiled(state, real)
    history.append(metrics)
    if step < config.num_steps:
      real = next_real()  # Overlaps the host pipeline with device work.
    log_now = is_time(step, config.log_every_steps, config.num_steps)
    stop = should_stop is not None and should_stop(step)
    save_now = stop or is_time(step, config.checkpoint_every_steps,
                               config.num_steps)
    if log_now or save_now:
      # Checked before a save too, so a diverged state is never saved.
      scalars = _window_means(history)
      bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
      if bad:
        last = manager.latest_step()
        raise FloatingPointError(
            f'Non-finite {", ".join(bad)} between steps {window_start + 1} '
            f'and {step}. ' + (
                f'Restart from the checkpoint at step {last}' if last
                is not None else 'Restart') + ' with a lower learning rate.')
    if log_now:
      elapsed = time.perf_counter() - t_window
      steps_per_sec = len(history) / elapsed
      scalars.update(
          steps_per_sec=steps_per_sec,
          images_per_sec=steps_per_sec * config.n_critic * config.batch_size,
          eta_min=(config.num_steps - step) / steps_per_sec / 60)
      writer.write_scalars(step, scalars)
      history, window_start, t_window = [], step, time.perf_counter()
    if save_now:
      if not bool(_all_finite(state)):
        raise FloatingPointError(
            f'Non-finite parameters at step {step}; not saved. Restart from '
            f'the checkpoint at step {manager.latest_step()} with a lower '
            'learning rate.')
      checkpoints.save(manager, step, state)
      if is_main:
        images = jax.device_get(sample(state.gen.params, state.gen.batch_stats))
        writers.save_image_grid(
            images, os.path.join(workdir, 'samples', f'step_{step:07d}.png'))
        writer.write_images(step, 'samples', writers.image_grid(images))
    if stop:
      logging.warning('Preemption (SIGTERM): checkpointing step %d of %d '
                      'and stopping; run the same command to resume.', step,
                      config.num_steps)
      break

  # ---- Wrap up ----
  manager.wait_until_finished()
  writer.close()
  if is_main:
    records = writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
    if records:
      writers.plot_losses(records, os.path.join(workdir, 'losses.png'))
  logging.info('Done at step %d; peak RSS %.0f MiB.', int(state.step),
               fileio.peak_rss_mib())
  return state
