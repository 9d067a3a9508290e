"""The default recipe at a quarter of the widths: a 30-minute run on 2 cores.

  TFDS_DATA_DIR=../shared/tfds python -m wgan_jax.main \
      --config=configs/narrow.py --workdir=runs/narrow

Critic 32-32-64-64-128-128 (7,168 feature dims), generator 128-64-32, layer
norm, Adam 1e-4 / 0 / 0.9, n_critic 5, lambda 10, batch 64, 700 generator
steps on the shared 4,999-image ImageNet 32x32 subset. Hardware: 2 CPU cores,
about 2.7 s per step (35 minutes). The README's results table gives what it
reached.
"""

from configs import default


def get_config():
  """Returns the narrow CPU configuration."""
  config = default.get_config()
  config.model.gen_widths = (128, 64, 32)
  config.model.critic_widths = (32, 32, 64, 64, 128, 128)
  config.num_steps = 700
  config.log_every_steps = 25
  config.checkpoint_every_steps = 100
  return config
