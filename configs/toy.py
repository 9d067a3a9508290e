"""The 2-D toy mixtures: MLP generator and critic, per-objective settings.

  python -m wgan_jax.mode_coverage --out=runs/mode_coverage

builds its runs from get_config('MIXTURE,LOSS'), e.g. 'ring,wgan-gp' or
'grid,gan' (wgan_jax.toy describes the mixtures). Settings follow the
WGAN-GP authors' toy code, narrower and far shorter so that the whole
experiment fits on 2 CPU cores: generator and critic of 3 hidden ReLU
layers (128 wide here, 512 there), 2-D noise, batch 256, and 3,000
generator steps (100,000 there).

To fit that budget every objective gets a learning rate of 1e-3 (10 times
the authors' Adam rate), falling linearly to 0 at the last step. Without
the decay (tried at 3e-4 and 1e-3) the final samples of WGAN-GP still
swept between modes near 3,000 steps (8, then 5 of 8 ring modes covered at
checks 250 steps apart); with it they settle.

  gan        the paper's equations 3-4; Adam 0.5 / 0.9, one
             discriminator update per generator update (standard GAN
             practice).
  wgan-gp    Adam 0.5 / 0.9, n_critic 5, lambda 0.1 (the authors' toy
             value).
  wgan-clip  the original WGAN: RMSProp, n_critic 5, clip 0.01. The WGAN
             paper's rate, 5e-5, was not tried: RMSProp's steps are about
             lr in size, too small for 3,000 steps. At 5e-4 (one check)
             and at 1e-3 (the experiment) it covered no ring mode.

Measured (5 seeds, 31 min on 2 busy cores): WGAN-GP 8.0 of 8 ring modes and
11.6 of 25 grid modes, GAN 7.0 and 2.4, clipped WGAN 0.0 and 0.2.
"""

from configs import default
from wgan_jax import losses
from wgan_jax import toy


def get_config(arg: str = 'ring,wgan-gp'):
  """Returns the toy configuration for 'MIXTURE' or 'MIXTURE,LOSS'."""
  mixture, _, loss = arg.partition(',')
  loss = loss or 'wgan-gp'
  if mixture not in toy.MIXTURES or loss not in losses.LOSSES:
    raise ValueError(f'configs/toy.py:{arg!r}; use MIXTURE,LOSS with MIXTURE '
                     f'in {toy.MIXTURES} and LOSS in {losses.LOSSES}.')
  config = default.get_config()
  config.mixture = mixture
  config.dataset = None  # Sampled by wgan_jax.toy, not read from TFDS.
  config.model.arch = 'mlp'
  config.model.data_dim = 2
  config.model.z_dim = 2
  config.model.gen_widths = (128, 128, 128)
  config.model.critic_widths = (128, 128, 128)
  config.model.critic_norm = 'none'
  config.batch_size = 256
  config.loss = loss
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.9
  config.optimizer.linear_decay = True
  if loss == 'gan':
    config.n_critic = 1
  elif loss == 'wgan-gp':
    config.gp_weight = 0.1
  else:
    config.optimizer.name = 'rmsprop'
  config.num_steps = 3_000  # Generator updates.
  config.log_every_steps = 500
  config.num_samples = 2_500  # Generated once at the end for the metrics.
  return config
