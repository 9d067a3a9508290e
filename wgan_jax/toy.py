"""2-D Gaussian mixtures of the WGAN-GP paper's toy experiments, and metrics.

'ring': 8 Gaussians evenly spaced on a circle of radius 2, std 0.02.
'grid': 25 Gaussians on the 5x5 grid {-4, -2, 0, 2, 4}^2, std 0.05.
Every component has the same weight and an isotropic covariance.

Metrics, on a fixed number of generated samples: a sample is high quality
when it lies within `num_std` (3) standard deviations of its nearest centre,
and a mode is covered when at least `min_share` (a quarter) of the samples
it would get under perfect, even coverage are high quality and nearest to
it: 79 of 2,500 samples for the ring, 25 of 2,500 for the grid.
"""

import numpy as np

MIXTURES = ('ring', 'grid')
# A 2-D Gaussian puts 1 - exp(-9 / 2) = 98.9% of its mass within 3 std.
NUM_STD = 3.0
MIN_SHARE = 0.25


def mixture(name: str) -> tuple[np.ndarray, float]:
  """The centres and the common standard deviation of a toy mixture.

  Args:
    name: 'ring' or 'grid'.

  Returns:
    (centres [K, 2] float64, std).
  """
  if name == 'ring':
    angles = 2 * np.pi * np.arange(8) / 8
    return 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.02
  if name == 'grid':
    ticks = np.arange(-4.0, 5.0, 2.0)
    xs, ys = np.meshgrid(ticks, ticks, indexing='ij')
    return np.stack([xs.ravel(), ys.ravel()], axis=1), 0.05
  raise ValueError(f'Unknown toy mixture {name!r}; use one of {MIXTURES}.')


def sample(rng: np.random.Generator, name: str,
           shape: tuple[int, ...]) -> np.ndarray:
  """Draws points of a toy mixture, each component equally likely.

  Args:
    rng: NumPy random generator.
    name: 'ring' or 'grid'.
    shape: leading shape, e.g. (n_critic, batch) for a train step.

  Returns:
    float32 points of shape shape + (2,).
  """
  centres, std = mixture(name)
  which = rng.integers(len(centres), size=shape)
  noise = rng.standard_normal(shape + (2,))
  return (centres[which] + std * noise).astype(np.float32)


def nearest_centre(samples: np.ndarray,
                   centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each sample's nearest centre and its distance to it.

  Args:
    samples: points [N, D].
    centres: mode centres [K, D].

  Returns:
    (indices [N] into centres, Euclidean distances [N]). A non-finite
    sample gets a non-finite distance.
  """
  samples = np.asarray(samples, np.float64)
  diff = samples[:, None, :] - np.asarray(centres, np.float64)[None]
  dist = np.sqrt(np.sum(diff ** 2, axis=-1))
  # argmin would pick index 0 for a NaN row; the distance stays NaN, so such
  # a sample is never high quality whatever its index.
  index = np.argmin(np.where(np.isnan(dist), np.inf, dist), axis=1)
  return index, dist[np.arange(len(samples)), index]


def high_quality(samples: np.ndarray, centres: np.ndarray, std: float,
                 num_std: float = NUM_STD) -> np.ndarray:
  """Whether each sample lies within num_std standard deviations of a centre.

  Args:
    samples: points [N, D].
    centres: mode centres [K, D].
    std: the mixture's per-coordinate standard deviation.
    num_std: the radius, in standard deviations.

  Returns:
    bool [N].
  """
  _, dist = nearest_centre(samples, centres)
  with np.errstate(invalid='ignore'):
    return dist <= num_std * std


def quality(samples: np.ndarray, centres: np.ndarray, std: float,
            num_std: float = NUM_STD) -> float:
  """The fraction of high-quality samples (see high_quality).

  Args:
    samples: points [N, D], N > 0.
    centres: mode centres [K, D].
    std: the mixture's standard deviation.
    num_std: the radius, in standard deviations.

  Returns:
    A float in [0, 1].
  """
  return float(np.mean(high_quality(samples, centres, std, num_std)))


def mode_counts(samples: np.ndarray, centres: np.ndarray, std: float,
                num_std: float = NUM_STD) -> np.ndarray:
  """How many high-quality samples fall on each mode.

  Args:
    samples: points [N, D].
    centres: mode centres [K, D].
    std: the mixture's standard deviation.
    num_std: the radius, in standard deviations.

  Returns:
    int counts [K]; they sum to the number of high-quality samples.
  """
  index, _ = nearest_centre(samples, centres)
  good = high_quality(samples, centres, std, num_std)
  return np.bincount(index[good], minlength=len(centres))


def modes_covered(samples: np.ndarray, centres: np.ndarray, std: float,
                  num_std: float = NUM_STD,
                  min_share: float = MIN_SHARE) -> int:
  """The number of modes that hold enough high-quality samples.

  A mode counts when at least min_share * N / K of the N samples are high
  quality and nearest to it, N / K being its share under even coverage. A
  relative threshold keeps the same meaning for 8 and 25 modes, and stray
  samples from a generator that has collapsed elsewhere do not count.

  Args:
    samples: points [N, D].
    centres: mode centres [K, D].
    std: the mixture's standard deviation.
    num_std: the radius, in standard deviations.
    min_share: fraction of the even share a mode needs.

  Returns:
    An int in [0, K].
  """
  counts = mode_counts(samples, centres, std, num_std)
  threshold = min_share * len(samples) / len(centres)
  return int(np.sum(counts >= threshold))
