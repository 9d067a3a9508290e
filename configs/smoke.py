"""A tiny run on the shared ImageNet 32x32 subset: about a minute on 2 cores.

  TFDS_DATA_DIR=../shared/tfds python -m wgan_jax.main \
      --config=configs/smoke.py --workdir=/tmp/wgan_smoke

Critic widths 8-8-16-16-32-32 (1,792 feature dims), generator 64-32-16,
batch 16, 30 generator steps. Checks that everything runs; its features are
barely better than random ones.
"""

from configs import default


def get_config():
  """Returns the smoke-test configuration."""
  config = default.get_config()
  config.model.z_dim = 32
  config.model.gen_widths = (64, 32, 16)
  config.model.critic_widths = (8, 8, 16, 16, 32, 32)
  config.batch_size = 16
  config.shuffle_buffer = 1_000
  config.num_steps = 30
  config.log_every_steps = 10
  config.checkpoint_every_steps = 15
  config.keep_checkpoints = 2
  config.num_samples = 16
  return config
