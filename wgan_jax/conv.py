"""Convolutions written as one matrix product over image patches.

XLA's CPU convolutions are slow for what a WGAN-GP step needs: the weight
gradient of an input-gradient convolution (the penalty's double backward) and
of a transposed convolution run near 1 GFLOP/s. Here a convolution is strided
slices (patch extraction) followed by one GEMM, so the forward pass and every
derivative of any order are slices, pads and GEMMs, which XLA runs fast on
CPU. The parameters are laid out exactly as in `flax.linen.Conv` and
`flax.linen.ConvTranspose`, so either implementation loads the other's
weights; tests check equal outputs and gradients, second order included.
Like Flax's, both take `dtype` (the compute dtype; None: inferred from the
input and parameters) and `param_dtype` (the parameters', float32 by
default), so bfloat16 compute keeps float32 parameters.
"""

from typing import Any

import flax.linen as nn
from flax.linen import dtypes
import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'matmul')


def resolve_impl(impl: str) -> str:
  """'auto' is 'matmul' on CPU and XLA's own convolution elsewhere."""
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv implementation {impl!r}; use one of '
                     f'{IMPLS}.')
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def extract_patches(x: jnp.ndarray, kernel_size: int, stride: int,
                    pads: tuple[int, int]) -> jnp.ndarray:
  """Image patches [B, Ho, Wo, k*k*C] in (kh, kw, c) order.

  Args:
    x: images [B, H, W, C].
    kernel_size: k, the same for both spatial dimensions.
    stride: the same for both spatial dimensions.
    pads: (before, after) zero padding of both spatial dimensions.

  Returns:
    The patches, ordered to match a kernel [k, k, C, F] reshaped to
    [k*k*C, F].
  """
  lo, hi = pads
  x = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  out_h = (x.shape[1] - kernel_size) // stride + 1
  out_w = (x.shape[2] - kernel_size) // stride + 1
  cols = [x[:, i:i + stride * (out_h - 1) + 1:stride,
            j:j + stride * (out_w - 1) + 1:stride, :]
          for i in range(kernel_size) for j in range(kernel_size)]
  return jnp.concatenate(cols, axis=-1)


def _matmul(patches, kernel, bias):
  k = kernel.reshape(-1, kernel.shape[-1])
  y = patches.reshape(-1, k.shape[0]) @ k + bias
  return y.reshape(patches.shape[:-1] + (k.shape[-1],))


class MatmulConv(nn.Module):
  """A drop-in for `nn.Conv` with square kernels, strides and padding."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,),
                      self.param_dtype)
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    patches = extract_patches(x, k, self.strides, (self.padding,) * 2)
    return _matmul(patches, kernel, bias)


def conv_transpose_pads(kernel_size: int, stride: int) -> tuple[int, int]:
  """The padding of `lax.conv_transpose(..., padding='SAME')`."""
  total = kernel_size + stride - 2
  before = kernel_size - 1 if stride > kernel_size - 1 else -(-total // 2)
  return before, total - before


class MatmulConvTranspose(nn.Module):
  """A drop-in for `nn.ConvTranspose(..., padding='SAME')`, square shapes.

  One GEMM takes every input pixel to its k*k output taps, then each tap's
  plane is placed at its strided offset (a pad) and summed (col2im). Unlike
  convolving a zero-dilated input, no multiplication by inserted zeros is done
  and the GEMM has k*k*F columns rather than F (3 for the RGB layer).
  """
  features: int
  kernel_size: int
  strides: int = 2
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s, f = self.kernel_size, self.strides, self.features
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], f),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (f,), self.param_dtype)
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    b, h, w, c = x.shape
    taps = x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, -1)
    taps = taps.reshape(b, h, w, k, k, f)
    # lax.conv_transpose correlates the dilated, padded input with the
    # kernel: input pixel i reaches output s * i + before - t through tap t.
    before, _ = conv_transpose_pads(k, s)
    zero = jnp.zeros((), x.dtype)
    out = None
    for ti in range(k):
      for tj in range(k):
        lo_h, lo_w = before - ti, before - tj
        plane = jax.lax.pad(
            taps[:, :, :, ti, tj, :], zero,
            ((0, 0, 0), (lo_h, s * h - (s * (h - 1) + 1) - lo_h, s - 1),
             (lo_w, s * w - (s * (w - 1) + 1) - lo_w, s - 1), (0, 0, 0)))
        out = plane if out is None else out + plane
    return out + bias
