"""WGAN-GP trained on the CIFAR-10 train images (labels unused).

  python -m wgan_jax.main --config=configs/cifar10.py --workdir=runs/cifar10

Same networks and optimiser as configs/default.py. Note that evaluating
these features on CIFAR-10 is no longer a transfer experiment. Hardware as
configs/default.py; expected result not yet measured.
"""

from configs import default


def get_config():
  """Returns the CIFAR-10 configuration."""
  config = default.get_config()
  config.dataset = 'cifar10'
  return config
