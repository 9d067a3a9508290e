"""Test setup: two CPU devices, and the shared TFDS data."""

import os

# Two host devices exercise the data-parallel step on any machine; this must
# be set before JAX initialises its backends.
_FLAG = '--xla_force_host_platform_device_count=2'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _FLAG).strip()
os.environ.setdefault(
    'TFDS_DATA_DIR',
    os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..',
                                 'shared', 'tfds')))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# The tests' networks are tiny: compilation, not running, dominates their
# time, and XLA's optimisation passes are most of compilation.
jax.config.update('jax_disable_most_optimizations', True)
