"""DCGAN-style generator and critic, the critic's feature layout, and MLPs.

The MLP generator and critic (config.model.arch = 'mlp') are for the 2-D
toy distributions of wgan_jax.mode_coverage.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from wgan_jax import conv

NORMS = ('layer', 'batch', 'none')
# config.model.arch: 'dcgan' (32x32x3 images, the convs below) or 'mlp'
# (vectors of config.model.data_dim, for the toy distributions).
ARCHS = ('dcgan', 'mlp')
FEATURE_GRID = 4  # Every conv map is max-pooled to a 4x4 grid (DCGAN).
# config.model.dtype: the compute dtype of convs, dense layers and norms'
# outputs. Parameters, batch-norm statistics, scores and losses stay float32.
DTYPES = ('float32', 'bfloat16')


def compute_dtype(name: str) -> jnp.dtype:
  """The jnp dtype for a `config.model.dtype` name; ValueError if unknown."""
  if name not in DTYPES:
    raise ValueError(f'config.model.dtype={name!r}; use one of {DTYPES} '
                     "('bfloat16': bf16 compute, float32 parameters, for "
                     'GPUs and TPUs).')
  return jnp.dtype(name)


class Generator(nn.Module):
  """Noise -> dense -> 4x4 map -> stride-2 transposed convs -> 32x32x3 tanh.

  Attributes:
    widths: channels of the 4x4 map and of each upsampled map but the last;
      one stride-2 transposed conv follows each, so len(widths) == 3 gives
      4 -> 8 -> 16 -> 32.
    kernel_size: transposed-conv kernel size.
    conv_impl: 'xla' (flax's ConvTranspose), 'matmul' (patches and one GEMM,
      fast on CPU) or 'auto' (by backend); the parameters are the same.
    dtype: compute dtype (float32 or bfloat16); parameters are float32
      either way and the images are returned as float32.
  """
  widths: Sequence[int] = (512, 256, 128)
  kernel_size: int = 4
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = True):
    batch_norm = lambda: nn.BatchNorm(  # pylint: disable=g-long-lambda
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        dtype=self.dtype)
    k = self.kernel_size
    impl = conv.resolve_impl(self.conv_impl)

    def upsample(features, name):
      if impl == 'matmul':
        return conv.MatmulConvTranspose(features, k, 2, dtype=self.dtype,
                                        name=name)
      return nn.ConvTranspose(features, (k, k), strides=(2, 2),
                              padding='SAME', dtype=self.dtype, name=name)

    x = nn.Dense(4 * 4 * self.widths[0], dtype=self.dtype, name='dense')(z)
    x = x.reshape(z.shape[0], 4, 4, self.widths[0])
    x = nn.relu(batch_norm()(x))
    for i, width in enumerate(self.widths[1:]):
      x = upsample(width, f'deconv{i}')(x)
      x = nn.relu(batch_norm()(x))
    x = upsample(3, f'deconv{len(self.widths) - 1}')(x)
    # float32 images, so the penalty's interpolates are float32.
    return jnp.tanh(x.astype(jnp.float32))


def conv_padding(kernel_size: int, stride: int) -> int:
  """Symmetric padding that maps size n to ceil(n / stride) (PyTorch style)."""
  if stride == 1:
    return (kernel_size - 1) // 2
  return kernel_size // 2 - (kernel_size % 2 == 0)


class Critic(nn.Module):
  """Conv stack with LeakyReLU 0.2 and a linear output.

  Attributes:
    widths: output channels of each conv.
    strides: stride of each conv.
    kernel_size: kernel size of every conv.
    norm: 'layer' (per example over H, W, C, per-channel scale and offset;
      the WGAN-GP authors' choice), 'batch' (the paper's choice; couples the
      examples of a batch) or 'none'. Never applied to the first conv.
    conv_impl: 'xla' (flax's Conv), 'matmul' (patches and one GEMM, fast on
      CPU) or 'auto' (by backend); the parameters are the same.
    bn_momentum: batch norm's running-average momentum; 0 makes a training
      pass store the batch's own statistics (used to recompute them).
    dtype: compute dtype (float32 or bfloat16); parameters are float32
      either way, and scores and feature maps are returned as float32.
  """
  widths: Sequence[int] = (128, 128, 256, 256, 512, 512)
  strides: Sequence[int] = (1, 2, 1, 2, 1, 2)
  kernel_size: int = 3
  norm: str = 'layer'
  conv_impl: str = 'auto'
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, return_features: bool = False):
    """Scores images.

    Args:
      x: images [B, H, W, 3] in [-1, 1].
      train: batch norm uses batch statistics (and updates its running
        averages) when True; ignored by the other norms.
      return_features: also return every conv layer's post-activation map.

    Returns:
      float32 scores [B], or (scores, [maps]) with return_features.
    """
    if self.norm not in NORMS:
      raise ValueError(
          f'Unknown critic norm {self.norm!r}; use one of {NORMS}.')
    if len(self.widths) != len(self.strides):
      raise ValueError('critic widths and strides differ in length: '
                       f'{self.widths} vs {self.strides}.')
    k = self.kernel_size
    impl = conv.resolve_impl(self.conv_impl)
    maps = []
    for i, (width, stride) in enumerate(zip(self.widths, self.strides)):
      p = conv_padding(k, stride)
      if impl == 'matmul':
        x = conv.MatmulConv(width, k, stride, p, dtype=self.dtype,
                            name=f'conv{i}')(x)
      else:
        x = nn.Conv(width, (k, k), strides=(stride, stride),
                    padding=((p, p), (p, p)), dtype=self.dtype,
                    name=f'conv{i}')(x)
      if i > 0 and self.norm == 'layer':
        # Over (H, W, C) of each example: Flax's default LayerNorm would
        # normalise each pixel's channels alone, which is not the paper's.
        # Statistics are float32 whatever the dtype (Flax's norms).
        x = nn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1,
                         dtype=self.dtype, name=f'norm{i}')(x)
      elif i > 0 and self.norm == 'batch':
        x = nn.BatchNorm(use_running_average=not train,
                         momentum=self.bn_momentum,
                         epsilon=1e-5, dtype=self.dtype,
                         name=f'norm{i}')(x)
      x = nn.leaky_relu(x, 0.2)
      maps.append(x)
    score = nn.Dense(1, dtype=self.dtype,
                     name='out')(x.reshape(x.shape[0], -1))[:, 0]
    # float32 before any reduction: the losses and the penalty's sum of
    # scores are then float32 too.
    score = score.astype(jnp.float32)
    if return_features:
      return score, [m.astype(jnp.float32) for m in maps]
    return score


def pool_features(maps: Sequence[jnp.ndarray],
                  grid: int = FEATURE_GRID) -> jnp.ndarray:
  """Max-pools each map to a grid x grid map, flattens and concatenates.

  The DCGAN protocol: the pooling window and stride are map size / grid.

  Args:
    maps: conv outputs [B, H, W, C] with H and W divisible by grid.
    grid: side of the pooled grid.

  Returns:
    Features [B, grid * grid * sum(C)], each map flattened in (h, w, c) order.
  """
  pooled = []
  for m in maps:
    h, w = m.shape[1:3]
    if h % grid or w % grid:
      raise ValueError(f'A {h}x{w} map does not pool to a {grid}x{grid} grid.')
    window = (h // grid, w // grid)
    m = nn.max_pool(m, window, strides=window)
    pooled.append(m.reshape(m.shape[0], -1))
  return jnp.concatenate(pooled, axis=-1)


def feature_layout(widths: Sequence[int], strides: Sequence[int],
                   image_size: int = 32, grid: int = FEATURE_GRID) -> dict:
  """Describes the exported feature vector of a critic architecture."""
  layers, size, offset = [], image_size, 0
  for i, (width, stride) in enumerate(zip(widths, strides)):
    size = -(-size // stride)
    dim = grid * grid * width
    layers.append(dict(name=f'conv{i}', channels=width, map_size=size,
                       pool_window=size // grid, offset=offset, dim=dim))
    offset += dim
  return dict(layers=layers, grid=grid, total_dim=offset)


class MLPGenerator(nn.Module):
  """Noise -> ReLU dense layers -> a linear layer of `data_dim` outputs.

  No batch norm and no output squashing: the toy data are unbounded points,
  as in the WGAN-GP authors' toy code.

  Attributes:
    widths: hidden layer widths.
    data_dim: size of each generated vector.
  """
  widths: Sequence[int] = (512, 512, 512)
  data_dim: int = 2

  @nn.compact
  def __call__(self, z, train: bool = True):
    del train  # No batch norm; the argument keeps the DCGAN interface.
    x = z
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, name=f'dense{i}')(x))
    return nn.Dense(self.data_dim, name='out')(x)


class MLPCritic(nn.Module):
  """Vectors -> ReLU dense layers -> one linear score per example.

  Examples are scored independently (no norm), so the gradient penalty's
  per-example input gradients are exact.

  Attributes:
    widths: hidden layer widths.
  """
  widths: Sequence[int] = (512, 512, 512)

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Scores vectors [B, D]; returns float32 scores [B]."""
    del train
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, name=f'dense{i}')(x))
    return nn.Dense(1, name='out')(x)[:, 0].astype(jnp.float32)


def data_shape(model_config) -> tuple[int, ...]:
  """Shape of one real example the configured models take (no batch axis)."""
  # Configs saved before the key existed were all DCGAN.
  if model_config.get('arch', 'dcgan') == 'mlp':
    return (model_config.data_dim,)
  return (32, 32, 3)


def create_models(model_config) -> tuple[nn.Module, nn.Module]:
  """Builds the generator and critic from `config.model`."""
  arch = model_config.get('arch', 'dcgan')
  if arch not in ARCHS:
    raise ValueError(f'config.model.arch={arch!r}; use one of {ARCHS}.')
  if arch == 'mlp':
    return (MLPGenerator(widths=tuple(model_config.gen_widths),
                         data_dim=model_config.data_dim),
            MLPCritic(widths=tuple(model_config.critic_widths)))
  impl = model_config.get('conv_impl', 'auto')
  # Configs saved before the key existed ran in float32.
  dtype = compute_dtype(model_config.get('dtype', 'float32'))
  gen = Generator(widths=tuple(model_config.gen_widths),
                  kernel_size=model_config.gen_kernel, conv_impl=impl,
                  dtype=dtype)
  critic = Critic(widths=tuple(model_config.critic_widths),
                  strides=tuple(model_config.critic_strides),
                  kernel_size=model_config.critic_kernel,
                  norm=model_config.critic_norm, conv_impl=impl, dtype=dtype)
  return gen, critic
