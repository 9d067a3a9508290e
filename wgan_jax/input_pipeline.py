"""Deterministic, resumable TFDS input pipelines of 32x32 images in [-1, 1]."""

import os
from typing import Any, Iterator

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

SUPPORTED = ('imagenet2012', 'imagenet_resized/32x32', 'cifar10')

IMAGE_SIZE = 32

# Datasets stored as full-size photos that must be resized and cropped; the
# others are stored at IMAGE_SIZE already.
_FULL_SIZE = ('imagenet2012',)

# Dataset.shuffle reduces its op seed modulo 2**31 - 1, so per-epoch seeds are
# drawn from that range to keep distinct (seed, epoch) pairs distinct.
_MAX_SHUFFLE_SEED = 2**31 - 1


def hide_accelerators_from_tf() -> None:
  """Makes GPUs and TPUs invisible to TensorFlow.

  TensorFlow is only used for input pipelines here; if it saw the
  accelerators it would grab their memory, which JAX needs. Safe to call
  any number of times.
  """
  for device_type in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError) as e:
      # RuntimeError: TF was initialised before with the devices visible.
      # ValueError: this TF build does not know the device type.
      logging.warning('Could not hide %s devices from TensorFlow: %s',
                      device_type, e)


hide_accelerators_from_tf()


def _check_name(name: str) -> None:
  if name not in SUPPORTED:
    raise ValueError(
        f'Unsupported dataset {name!r}; supported: {", ".join(SUPPORTED)}.')


def resolve_data_dir(data_dir: str | None) -> str | None:
  """Returns the TFDS data dir to read from.

  Args:
    data_dir: Explicit data dir, or None.

  Returns:
    `data_dir` if given, else the TFDS_DATA_DIR environment variable if set,
    else None (the TFDS default, ~/tensorflow_datasets).
  """
  if data_dir:
    return data_dir
  return os.environ.get('TFDS_DATA_DIR') or None


def _not_prepared_message(name: str, root: str, version_dir: str) -> str:
  """Explains how to make a dataset available without downloading here."""
  message = (
      f'Dataset {name!r} is not prepared in data dir {root!r} (looked for '
      f'{version_dir}). This pipeline never downloads. Set TFDS_DATA_DIR (or '
      '--config.data_dir for training, --data_dir for export) to a folder '
      'that holds the prepared dataset')
  if name == 'imagenet2012':
    return message + (
        '. ImageNet cannot be downloaded by TFDS: place the two files '
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar by hand in '
        f'{os.path.join(root, "downloads", "manual")} and then run '
        f'`tfds build imagenet2012 --data_dir={root}`.')
  return message + (
      f', or run `tfds build {name} --data_dir={root}` on a machine with '
      'internet access and copy the result here.')


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns the builder of an already prepared dataset.

  Args:
    name: One of SUPPORTED.
    data_dir: TFDS data dir, or None (see resolve_data_dir).

  Returns:
    The dataset builder, ready for `as_dataset`.

  Raises:
    ValueError: `name` is not supported.
    FileNotFoundError: the dataset is not prepared in the data dir.
  """
  _check_name(name)
  builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
        _not_prepared_message(name, os.fspath(builder.data_dir_root),
                              builder.data_dir))
  return builder


def _resize_short_side_and_center_crop(image: tf.Tensor,
                                       size: int) -> tf.Tensor:
  """DCGAN recipe: short side to `size` keeping aspect, then center crop."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  scale = size / tf.cast(tf.minimum(height, width), tf.float32)

  def scaled(length):
    new = tf.cast(tf.round(tf.cast(length, tf.float32) * scale), tf.int32)
    # Rounding must never leave the short side below the crop size.
    return tf.maximum(new, size)

  new_height, new_width = scaled(height), scaled(width)
  # Area (box) filtering averages every source pixel, as in the scripts that
  # made Imagenet32, so the large downscale does not alias.
  resized = tf.image.resize(image, [new_height, new_width],
                            method=tf.image.ResizeMethod.AREA,
                            antialias=True)
  top = (new_height - size) // 2
  left = (new_width - size) // 2
  cropped = tf.slice(resized, [top, left, 0], [size, size, -1])
  return tf.ensure_shape(cropped, [size, size, 3])


def preprocess_image(image: tf.Tensor, name: str) -> tf.Tensor:
  """Maps a decoded image to the model's input format.

  Args:
    image: uint8 tensor [height, width, 3].
    name: Dataset name, one of SUPPORTED; decides whether to resize.

  Returns:
    float32 tensor [32, 32, 3] with values in [-1, 1] (x / 127.5 - 1).
  """
  _check_name(name)
  if name in _FULL_SIZE:
    image = _resize_short_side_and_center_crop(image, IMAGE_SIZE)
  else:
    image = tf.ensure_shape(image, [IMAGE_SIZE, IMAGE_SIZE, 3])
  image = tf.cast(image, tf.float32) / 127.5 - 1.0
  # Only resizing can produce values outside [0, 255]; clipping is a no-op
  # otherwise.
  return tf.clip_by_value(image, -1.0, 1.0)


def num_examples(name: str, split: Any, data_dir: str | None) -> int:
  """Returns the number of examples in a split (slices like 'train[:10]' ok).

  Args:
    name: One of SUPPORTED.
    split: TFDS split, e.g. 'train', 'test[:37]', or a process_split result.
    data_dir: TFDS data dir, or None (see resolve_data_dir).

  Returns:
    The example count from the dataset's metadata.

  Raises:
    ValueError: `name` is not supported.
    FileNotFoundError: the dataset is not prepared (see get_builder).
  """
  builder = get_builder(name, data_dir)
  return builder.info.splits[split].num_examples


def process_split(split: str, process_index: int,
                  process_count: int) -> tfds.typing.SplitArg:
  """Returns this process's disjoint part of a split.

  The parts of all processes together cover the split exactly once; their
  sizes differ by at most one example.

  Args:
    split: TFDS split string, e.g. 'train' or 'train[:50%]'.
    process_index: Index of this process, in [0, process_count).
    process_count: Number of processes.

  Returns:
    `split` itself if process_count is 1, else a split object that
    `as_dataset` and `info.splits[...]` accept.

  Raises:
    ValueError: the process index or count is out of range.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Bad process_index={process_index} for '
                     f'process_count={process_count}.')
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count)[process_index]


def _read_config() -> tfds.ReadConfig:
  """Reads the shards one after another, so the order is the split order."""
  options = tf.data.Options()
  options.deterministic = True
  return tfds.ReadConfig(
      options=options,
      # A cache inside the per-epoch flat_map could be read while it is
      # still being written; the files are read again each epoch instead.
      try_autocache=False,
      interleave_cycle_length=1,
      skip_prefetch=True,
  )


def _read_encoded(builder: tfds.core.DatasetBuilder,
                  split: Any) -> tf.data.Dataset:
  """Returns the split's examples in order, with the images still encoded."""
  return builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=_read_config(),
  )


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """Derives the shuffle seed of one epoch from (seed, epoch)."""
  # A stateless hash mixes the pair, so nearby seeds and epochs give
  # unrelated orders and no two likely pairs collide.
  return tf.random.stateless_uniform(
      [], seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
      minval=0, maxval=_MAX_SHUFFLE_SEED, dtype=tf.int64)


def _final_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def create_train_dataset(
    name: str,
    split: str,
    batch_size: int,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    start_example: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
  """Returns an infinite, deterministic and resumable stream of batches.

  The stream is epochs 0, 1, 2, ... of this process's part of the split. Each
  epoch reads the part in file order and shuffles it with a buffer seeded by
  (seed, epoch), so every epoch has its own order but the whole stream is the
  same from run to run. Shuffling works on the encoded images, and
  `start_example` examples are dropped before decoding, so resuming is cheap:
  the stream with start_example=k * batch_size equals the stream with
  start_example=0 after its first k batches.

  The order also depends on TensorFlow's global seed, which this code never
  sets; do not call tf.random.set_seed in a process that uses it.

  Args:
    name: One of SUPPORTED.
    split: TFDS split string, e.g. 'train' or 'train[:90%]'.
    batch_size: Batch size of THIS process.
    data_dir: TFDS data dir, or None (see resolve_data_dir).
    seed: Shuffle seed; the same seed gives the same stream.
    shuffle_buffer: Number of encoded examples in the shuffle buffer.
    start_example: Number of examples of THIS process's stream to skip, e.g.
      steps_done * batch_size when resuming.
    process_index: Index of this process, in [0, process_count).
    process_count: Number of processes; each reads a disjoint part.

  Returns:
    An infinite tf.data.Dataset of {'image': float32 [batch_size, 32, 32,
    3]} with values in [-1, 1].

  Raises:
    ValueError: bad arguments, or the process's part of the split is empty.
    FileNotFoundError: the dataset is not prepared (see get_builder).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if shuffle_buffer < 1:
    raise ValueError(
        f'shuffle_buffer must be positive, got {shuffle_buffer}.')
  if start_example < 0:
    raise ValueError(
        f'start_example must be non-negative, got {start_example}.')
  builder = get_builder(name, data_dir)
  part = process_split(split, process_index, process_count)
  epoch_size = builder.info.splits[part].num_examples
  if epoch_size < 1:
    raise ValueError(f'Split {split!r} of {name!r} has no examples for '
                     f'process {process_index} of {process_count}.')
  encoded = _read_encoded(builder, part).map(lambda ex: ex['image'])

  def shuffled_epoch(epoch):
    return encoded.shuffle(
        shuffle_buffer, seed=_epoch_seed(seed, epoch),
        reshuffle_each_iteration=False)

  # Whole epochs before start_example are never read: the epoch counter
  # starts past them and only the remainder is skipped.
  first_epoch, skip = divmod(start_example, epoch_size)
  ds = tf.data.Dataset.counter(start=first_epoch).flat_map(shuffled_epoch)
  ds = ds.skip(skip)

  image_feature = builder.info.features['image']

  def decode(encoded_image):
    image = image_feature.decode_example(encoded_image)
    return preprocess_image(image, name)

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(lambda images: {'image': images})
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_final_options())


def _part_offset(builder: tfds.core.DatasetBuilder, split: str,
                 process_index: int, process_count: int) -> int:
  """Returns the position in `split` of the first example of a part."""
  return sum(
      builder.info.splits[process_split(split, i, process_count)].num_examples
      for i in range(process_index))


def create_eval_dataset(
    name: str,
    split: str,
    batch_size: int,
    *,
    data_dir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
  """Returns one ordered pass over this process's part of a split.

  Every example comes exactly once, in split order, and the last partial
  batch is kept.

  Args:
    name: One of SUPPORTED.
    split: TFDS split string, e.g. 'test' or 'validation[:100]'.
    batch_size: Batch size of THIS process.
    data_dir: TFDS data dir, or None (see resolve_data_dir).
    process_index: Index of this process, in [0, process_count).
    process_count: Number of processes; each reads a disjoint part.

  Returns:
    A tf.data.Dataset of {'image': float32 [b, 32, 32, 3] in [-1, 1],
    'label': int32 [b], 'index': int64 [b]}, b <= batch_size, where index is
    the position of the example in the whole of `split` (0..N-1), also when
    the split is shared among processes.

  Raises:
    ValueError: bad arguments.
    FileNotFoundError: the dataset is not prepared (see get_builder).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  builder = get_builder(name, data_dir)
  part = process_split(split, process_index, process_count)
  offset = _part_offset(builder, split, process_index, process_count)
  image_feature = builder.info.features['image']

  def decode(index, example):
    image = image_feature.decode_example(example['image'])
    return {
        'image': preprocess_image(image, name),
        'label': tf.cast(example['label'], tf.int32),
        'index': index,
    }

  ds = _read_encoded(builder, part).enumerate(start=offset)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=False)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_final_options())


def as_numpy_iterator(ds: tf.data.Dataset) -> Iterator[dict[str, Any]]:
  """Iterates over a dataset's elements as dicts of numpy arrays."""
  return iter(tfds.as_numpy(ds))
