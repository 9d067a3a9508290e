"""Mode coverage of GAN, WGAN-GP and weight-clipped WGAN on 2-D mixtures.

  python -m wgan_jax.mode_coverage --out=runs/mode_coverage \
      [--seeds=5] [--steps=3000] [--mixtures=ring,grid] \
      [--losses=gan,wgan-gp,wgan-clip]

Trains each objective on each mixture (configs/toy.py, wgan_jax/toy.py)
once per seed, through the same init_state and jitted train step as image
training, and measures the modes covered and the fraction of high-quality
samples on the 2,500 fixed-noise samples of the final generator. Writes
OUT/results.json (every run, and mean +- std over seeds; rewritten after
each run), OUT/results.md (the table) and OUT/modes.png (the first seed's
samples of each objective over the true modes).
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from configs import toy as toy_config
from wgan_jax import fileio
from wgan_jax import losses
from wgan_jax import models
from wgan_jax import toy
from wgan_jax import train


def _define_flags() -> None:
  """Defines the CLI flags, only when run as a program.

  wgan_jax.export defines --out too; a process (the test suite) may import
  both modules.
  """
  flags.DEFINE_string('out', None, 'Where the results are written.')
  flags.DEFINE_integer('seeds', 5, 'Seeds 0..N-1 for every run.')
  flags.DEFINE_integer('steps', None, 'Generator updates per run; '
                       "configs/toy.py's num_steps when unset.")
  flags.DEFINE_list('mixtures', list(toy.MIXTURES),
                    'Toy mixtures to train on.')
  flags.DEFINE_list('losses', ['gan', 'wgan-gp', 'wgan-clip'],
                    'Objectives to compare.')
  flags.mark_flags_as_required(['out'])


_LABELS = {'gan': 'GAN', 'wgan-gp': 'WGAN-GP', 'wgan-clip': 'WGAN (clip)'}


def train_toy(config, log_every: int = 0) -> tuple[np.ndarray, dict]:
  """Trains one toy run and returns its final fixed-noise samples.

  Args:
    config: a configs/toy.py config (config.mixture names the data).
    log_every: log the step's metrics every this many steps (0: never).

  Returns:
    (samples [config.num_samples, 2] float32, info) where info holds the
    final step's metrics and the run's wall time in seconds.
  """
  t0 = time.perf_counter()
  # One device: the toy networks are far too small to gain from data
  # parallelism, and per-step all-reduces between host devices only wait.
  mesh = train.create_mesh(jax.devices()[:1])
  train.validate_config(config, mesh.size)
  gen, critic = models.create_models(config.model)
  state = jax.jit(lambda key: train.init_state(config, gen, critic, key))(
      jax.random.PRNGKey(config.seed))
  step = train.jit_train_step(train.make_train_step(config, gen, critic),
                              mesh)
  # The data's stream depends on the seed only, like the model's keys.
  rng = np.random.default_rng(config.seed)
  metrics = {}
  for i in range(1, config.num_steps + 1):
    real = toy.sample(rng, config.mixture,
                      (config.n_critic, config.batch_size))
    state, metrics = step(state, real)
    if log_every and (i % log_every == 0 or i == config.num_steps):
      logging.info('%s %s seed %d step %d: %s', config.mixture, config.loss,
                   config.seed, i, ', '.join(
                       f'{k} {float(v):.4g}'
                       for k, v in jax.device_get(metrics).items()))
  sample = train.make_sampler(config, gen)
  samples = np.asarray(jax.device_get(
      sample(state.gen.params, state.gen.batch_stats)))
  info = {k: float(v) for k, v in jax.device_get(metrics).items()}
  info['wall_s'] = time.perf_counter() - t0
  return samples, info


def evaluate(samples: np.ndarray, mixture: str) -> dict:
  """Modes covered, their count and the quality of one run's samples."""
  centres, std = toy.mixture(mixture)
  return dict(modes=toy.modes_covered(samples, centres, std),
              num_modes=len(centres),
              quality=toy.quality(samples, centres, std),
              finite=bool(np.all(np.isfinite(samples))))


def summarise(runs: list[dict]) -> list[dict]:
  """Mean and sample std (ddof 1) over seeds, per mixture and objective."""
  rows = []
  keys = sorted({(r['mixture'], r['loss']) for r in runs},
                key=lambda k: (toy.MIXTURES.index(k[0]),
                               losses.LOSSES.index(k[1])))
  for mixture, loss in keys:
    group = [r for r in runs if (r['mixture'], r['loss']) == (mixture, loss)]
    ddof = 1 if len(group) > 1 else 0
    row = dict(mixture=mixture, loss=loss, seeds=len(group),
               num_modes=group[0]['num_modes'])
    for key in ('modes', 'quality'):
      values = np.array([r[key] for r in group], np.float64)
      row[f'{key}_mean'] = float(np.mean(values))
      row[f'{key}_std'] = float(np.std(values, ddof=ddof))
    row['all_modes_runs'] = sum(r['modes'] == r['num_modes'] for r in group)
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  """A Markdown table of summarise's rows."""
  lines = ['| mixture | objective | modes covered | high-quality samples | '
           'runs with all modes |', '|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['mixture']} ({r['num_modes']}) | {_LABELS[r['loss']]} | "
        f"{r['modes_mean']:.1f} +- {r['modes_std']:.1f} | "
        f"{100 * r['quality_mean']:.1f}% +- {100 * r['quality_std']:.1f}% | "
        f"{r['all_modes_runs']} of {r['seeds']} |")
  return '\n'.join(lines) + '\n'


def plot_modes(samples: dict, path: str):
  """One panel per (mixture, objective): samples over the true modes.

  Args:
    samples: {(mixture, loss): points [N, 2]}.
    path: destination PNG, written atomically.
  """
  # Figure and the Agg canvas directly, as in writers.plot_losses.
  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as mpl_figure
  from matplotlib import patches
  from matplotlib.backends import backend_agg
  # pylint: enable=g-import-not-at-top
  mixtures = [m for m in toy.MIXTURES if any(k[0] == m for k in samples)]
  loss_names = [l for l in losses.LOSSES if any(k[1] == l for k in samples)]
  fig = mpl_figure.Figure(
      figsize=(3.2 * len(loss_names), 3.4 * len(mixtures)),
      layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(len(mixtures), len(loss_names), squeeze=False)
  for i, mixture in enumerate(mixtures):
    centres, std = toy.mixture(mixture)
    lim = np.abs(centres).max() * 1.5
    for j, loss in enumerate(loss_names):
      ax = axes[i, j]
      points = samples.get((mixture, loss))
      if points is not None:
        points = points[np.all(np.isfinite(points), axis=1)]
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.3,
                   color='tab:blue', rasterized=True)
        result = evaluate(samples[(mixture, loss)], mixture)
        ax.set_title(f"{_LABELS[loss]}: {result['modes']}/"
                     f"{result['num_modes']} modes, "
                     f"{100 * result['quality']:.0f}% HQ", fontsize=9)
      # The 3-std discs a high-quality sample must fall in, and the centres.
      for c in centres:
        ax.add_patch(patches.Circle(c, toy.NUM_STD * std, fill=False,
                                    color='tab:red', linewidth=0.8))
      ax.scatter(centres[:, 0], centres[:, 1], s=6, color='tab:red',
                 marker='x')
      ax.set_xlim(-lim, lim)
      ax.set_ylim(-lim, lim)
      ax.set_aspect('equal')
      ax.tick_params(labelsize=7)
      if j == 0:
        ax.set_ylabel(mixture)
  fig.suptitle('Samples (blue) over the true modes (red: 3-std discs); '
               'first seed', fontsize=10)
  fileio.atomic_write_file(path, lambda f: fig.savefig(f, format='png',
                                                       dpi=110))


def run_experiment(out: str, seeds: int, mixtures, loss_names,
                   steps: int | None = None) -> dict:
  """Trains every (mixture, objective, seed) and writes the results.

  Args:
    out: output folder.
    seeds: the number of seeds, 0..seeds-1.
    mixtures: names from toy.MIXTURES.
    loss_names: names from losses.LOSSES.
    steps: generator updates per run (None: the config's).

  Returns:
    The results.json contents.
  """
  for name in mixtures:
    toy.mixture(name)  # Fails on an unknown name before any training.
  configs = {(m, l): toy_config.get_config(f'{m},{l}')
             for m in mixtures for l in loss_names}
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  runs, first = [], {}
  for (mixture, loss), config in configs.items():
    for seed in range(seeds):
      run_config = config.copy_and_resolve_references()
      run_config.seed = seed
      if steps is not None:
        run_config.num_steps = steps
      samples, info = train_toy(run_config,
                                log_every=run_config.log_every_steps)
      result = dict(mixture=mixture, loss=loss, seed=seed,
                    **evaluate(samples, mixture), **info)
      runs.append(result)
      first.setdefault((mixture, loss), samples)
      logging.info('%s %s seed %d: %d of %d modes, quality %.3f, %.0f s '
                   '(%.0f s so far)', mixture, loss, seed, result['modes'],
                   result['num_modes'], result['quality'], info['wall_s'],
                   time.perf_counter() - t0)
      results = dict(
          summary=summarise(runs), runs=runs,
          settings=dict(seeds=seeds, steps={f'{m},{l}': c.num_steps
                                            for (m, l), c in configs.items()}
                        if steps is None else steps,
                        num_samples=config.num_samples,
                        num_std=toy.NUM_STD, min_share=toy.MIN_SHARE,
                        configs={f'{m},{l}': c.to_dict()
                                 for (m, l), c in configs.items()}),
          wall_s=time.perf_counter() - t0)
      # Rewritten after every run, so an interrupted experiment keeps what
      # it finished.
      fileio.atomic_write_json(os.path.join(out, 'results.json'), results)
  fileio.atomic_write_text(os.path.join(out, 'results.md'),
                           table(results['summary']))
  plot_modes(first, os.path.join(out, 'modes.png'))
  logging.info('Done in %.0f s; peak RSS %.0f MiB.\n%s', results['wall_s'],
               fileio.peak_rss_mib(), table(results['summary']))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  values = flags.FLAGS
  for loss in values.losses:
    if loss not in losses.LOSSES:
      raise app.UsageError(f'--losses: {loss!r}; use some of {losses.LOSSES}.')
  for mixture in values.mixtures:
    if mixture not in toy.MIXTURES:
      raise app.UsageError(
          f'--mixtures: {mixture!r}; use some of {toy.MIXTURES}.')
  if values.seeds < 1:
    raise app.UsageError('--seeds must be at least 1.')
  run_experiment(values.out, values.seeds, values.mixtures, values.losses,
                 values.steps)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
