"""Training metrics, sample image grids and loss plots for WGAN-GP runs."""

import json
import math
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from wgan_jax import fileio

METRICS_FILENAME = 'metrics.jsonl'
TENSORBOARD_DIRNAME = 'tensorboard'

# Losses drawn on the main panel of plot_losses, with their legend labels.
_LOSS_CURVES = (
    ('critic_loss', 'critic loss'),
    ('wasserstein', 'Wasserstein estimate'),
    ('gen_loss', 'generator loss'),
)
_PENALTY_KEY = 'gradient_penalty'


def _to_python_scalar(value: Any) -> int | float | bool:
  """Converts a Python, NumPy or JAX scalar to a JSON-friendly Python one."""
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f'expected a scalar, got an array of shape {array.shape}')
  return array.reshape(()).item()


def _format_number(value: int | float | bool) -> str:
  """Formats a number compactly for a one-line log message."""
  if isinstance(value, (bool, int)):
    return str(value)
  return f'{value:.4g}'


class MetricWriter:
  """Writes scalars to metrics.jsonl, TensorBoard and the absl log.

  Files go under `workdir`: `metrics.jsonl` (one JSON object per call of
  write_scalars, appended) and `tensorboard/` (event files). Only one process
  of a multi-host run should write; the others pass `enabled=False`, which
  makes every method a no-op and creates no files.

  TensorFlow is imported only when an enabled writer is created, so importing
  this module stays cheap.
  """

  def __init__(self, workdir: str | os.PathLike[str], enabled: bool = True,
               start_step: int | None = None):
    """Opens the metric files under `workdir`, creating it if needed.

    Args:
      workdir: directory of the training run.
      enabled: whether this process writes anything at all.
      start_step: the step a (re)started run begins at. Records of later
        steps already in metrics.jsonl are dropped first: they come from a
        run that stopped after its last checkpoint, and this one logs those
        steps again. None keeps every record.
    """
    self._enabled = enabled
    self._jsonl = None
    self._tf = None
    self._summary_writer = None
    if not enabled:
      return
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if start_step is not None:
      _drop_records_after(os.path.join(workdir, METRICS_FILENAME), start_step)
    self._jsonl = open(
        os.path.join(workdir, METRICS_FILENAME), 'a', encoding='utf-8'
    )
    # Imported here because TF takes seconds to load and only the writing
    # process needs it.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
      # TF is only used for summaries; hiding GPUs keeps it from reserving
      # accelerator memory that JAX needs.
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:
      # TF was already initialised by someone else; its devices are fixed.
      logging.warning('TensorFlow already initialised; GPUs may be visible.')
    self._tf = tf
    self._summary_writer = tf.summary.create_file_writer(
        os.path.join(workdir, TENSORBOARD_DIRNAME)
    )

  @property
  def enabled(self) -> bool:
    """Whether this writer writes anything."""
    return self._enabled

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Records scalars for one step in all three sinks.

    Args:
      step: training step the values belong to.
      scalars: metric name -> Python, NumPy or JAX scalar. Non-finite values
        are kept (JSON gets NaN/Infinity, as Python's json module reads them)
        because a diverging loss is exactly what one wants to see.
    """
    if not self._enabled:
      return
    step = int(step)
    values = {key: _to_python_scalar(v) for key, v in scalars.items()}
    if 'step' in values:
      raise ValueError("'step' is reserved and cannot be a scalar name")
    self._jsonl.write(json.dumps({'step': step, **values}) + '\n')
    self._jsonl.flush()
    with self._summary_writer.as_default(step=step):
      for key, value in values.items():
        self._tf.summary.scalar(key, float(value))
    logging.info(
        'step %d | %s',
        step,
        ' '.join(f'{k}={_format_number(v)}' for k, v in values.items()),
    )

  def write_images(self, step: int, name: str, image_uint8_hwc: Any) -> None:
    """Records one image (e.g. an image_grid of samples) in TensorBoard.

    Args:
      step: training step the image belongs to.
      name: TensorBoard tag.
      image_uint8_hwc: uint8 array [H, W, C] with C in {1, 3, 4}.
    """
    if not self._enabled:
      return
    image = np.asarray(image_uint8_hwc)
    if image.dtype != np.uint8 or image.ndim != 3:
      raise ValueError(
          'expected a uint8 [H, W, C] image, got dtype '
          f'{image.dtype} and shape {image.shape}'
      )
    with self._summary_writer.as_default(step=int(step)):
      self._tf.summary.image(name, image[np.newaxis], max_outputs=1)

  def flush(self) -> None:
    """Pushes buffered records to disk."""
    if not self._enabled:
      return
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def close(self) -> None:
    """Flushes and closes the files; later calls are no-ops."""
    if not self._enabled:
      return
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._summary_writer is not None:
      self._summary_writer.close()
      self._summary_writer = None
    self._enabled = False

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


def _drop_records_after(jsonl_path: str, step: int) -> None:
  """Rewrites metrics.jsonl (atomically) without the records past `step`."""
  if not os.path.exists(jsonl_path):
    return
  records = read_metrics(jsonl_path)
  kept = [r for r in records if r['step'] <= step]
  if len(kept) == len(records):
    return
  logging.info('Dropping %d records past step %d from %s (logged after the '
               'last checkpoint; this run logs them again).',
               len(records) - len(kept), step, jsonl_path)
  fileio.atomic_write_text(
      jsonl_path, ''.join(json.dumps(r) + '\n' for r in kept))


def read_metrics(jsonl_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads the records written by MetricWriter.write_scalars.

  A run killed mid-write can leave a truncated last line; that line is
  skipped with a warning, while a malformed line elsewhere is an error.

  Args:
    jsonl_path: path of a metrics.jsonl file.

  Returns:
    One dict per line, in file order, each with a 'step' key.
  """
  with open(jsonl_path, encoding='utf-8') as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        logging.warning('Skipping truncated last line of %s', jsonl_path)
      else:
        raise
  return records


def image_grid(images: np.ndarray, ncols: int | None = None) -> np.ndarray:
  """Tiles images in [-1, 1] into one uint8 image.

  Pixel values map linearly with (x + 1) * 127.5, then are clipped to
  [0, 255] and rounded half to even, so -1 -> 0, 0 -> 128 and 1 -> 255.
  NaNs (a diverged generator) become 0. Tiles are separated by 1 pixel of
  black padding, with no outer border; unused cells of the last row are
  black.

  Args:
    images: float array [N, H, W, C] with values in [-1, 1].
    ncols: tiles per row; defaults to ceil(sqrt(N)), a near-square grid.

  Returns:
    uint8 array [rows * H + rows - 1, ncols * W + ncols - 1, C].
  """
  images = np.asarray(images, dtype=np.float32)
  if images.ndim != 4:
    raise ValueError(f'expected images [N, H, W, C], got shape {images.shape}')
  n, h, w, c = images.shape
  if n == 0:
    raise ValueError('cannot make a grid of zero images')
  if ncols is None:
    ncols = math.ceil(math.sqrt(n))
  if ncols < 1:
    raise ValueError(f'ncols must be positive, got {ncols}')
  ncols = min(ncols, n)
  nrows = math.ceil(n / ncols)
  # Casting [-1, 1] floats straight to uint8 would wrap negatives; rescale,
  # clip and round first.
  pixels = np.nan_to_num(images, nan=-1.0)
  pixels = np.rint(np.clip((pixels + 1.0) * 127.5, 0.0, 255.0))
  pixels = pixels.astype(np.uint8)
  grid = np.zeros((nrows * (h + 1) - 1, ncols * (w + 1) - 1, c), np.uint8)
  for i in range(n):
    row, col = divmod(i, ncols)
    top, left = row * (h + 1), col * (w + 1)
    grid[top : top + h, left : left + w] = pixels[i]
  return grid


def save_image_grid(
    images: np.ndarray,
    path: str | os.PathLike[str],
    ncols: int | None = None,
) -> None:
  """Saves image_grid(images, ncols) as a PNG file, atomically.

  Args:
    images: float array [N, H, W, C] with values in [-1, 1], C in {1, 3}.
    path: destination PNG file.
    ncols: tiles per row; see image_grid.
  """
  # PIL and matplotlib load lazily so that importing this module is cheap.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  grid = image_grid(images, ncols)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  picture = Image.fromarray(grid)
  fileio.atomic_write_file(path, lambda f: picture.save(f, format='PNG'))


def plot_losses(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> None:
  """Plots critic and generator losses against step and saves a PNG.

  Draws 'critic_loss', 'wasserstein' and 'gen_loss' (whichever the records
  have) on one panel, like the "Generator and critic loss" figure of the
  WGAN-GP paper, plus 'gradient_penalty' on a smaller panel below when
  present. Records lacking a key (e.g. evaluation-only lines) are skipped
  for that curve.

  Args:
    records: dicts with a 'step' key, e.g. from read_metrics.
    path: destination PNG file, written atomically.
  """
  # Figure + the Agg canvas directly, instead of pyplot, leaves the global
  # backend and pyplot's figure registry alone.
  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as mpl_figure
  from matplotlib.backends import backend_agg
  # pylint: enable=g-import-not-at-top

  def curve(key):
    points = [(r['step'], r[key]) for r in records if 'step' in r and key in r]
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]

  has_penalty = any(_PENALTY_KEY in r for r in records)
  fig = mpl_figure.Figure(
      figsize=(8, 6.5 if has_penalty else 5), layout='constrained'
  )
  backend_agg.FigureCanvasAgg(fig)
  if has_penalty:
    loss_ax, penalty_ax = fig.subplots(
        2, 1, sharex=True, gridspec_kw={'height_ratios': (3, 1)}
    )
  else:
    loss_ax, penalty_ax = fig.subplots(), None

  for key, label in _LOSS_CURVES:
    steps, values = curve(key)
    if steps:
      loss_ax.plot(steps, values, label=label, linewidth=1)
  loss_ax.set_title('Generator and critic loss')
  loss_ax.set_ylabel('loss')
  loss_ax.grid(alpha=0.3)
  if loss_ax.get_legend_handles_labels()[0]:
    loss_ax.legend()

  bottom_ax = loss_ax
  if penalty_ax is not None:
    steps, values = curve(_PENALTY_KEY)
    penalty_ax.plot(
        steps, values, label='gradient penalty', color='tab:red', linewidth=1
    )
    penalty_ax.set_ylabel('penalty')
    penalty_ax.grid(alpha=0.3)
    penalty_ax.legend()
    bottom_ax = penalty_ax
  bottom_ax.set_xlabel('step')

  fileio.atomic_write_file(
      path, lambda f: fig.savefig(f, format='png', dpi=100)
  )
