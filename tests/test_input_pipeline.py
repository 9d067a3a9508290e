"""Tests of wgan_jax.input_pipeline on the prepared offline TFDS data."""

import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from wgan_jax import input_pipeline

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get(
    'TFDS_DATA_DIR',
    os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                 'shared', 'tfds'))

IN32 = 'imagenet_resized/32x32'
_HAVE_CIFAR = os.path.isdir(os.path.join(DATA_DIR, 'cifar10'))
_HAVE_IN32 = os.path.isdir(os.path.join(DATA_DIR, 'imagenet_resized', '32x32'))

needs_cifar = unittest.skipUnless(_HAVE_CIFAR,
                                  f'cifar10 not prepared in {DATA_DIR}')
needs_in32 = unittest.skipUnless(_HAVE_IN32,
                                 f'{IN32} not prepared in {DATA_DIR}')


def _train_images(num_batches, split='train', batch_size=8, **kwargs):
  """Returns the first batches of a train stream as one [n, 32, 32, 3]."""
  ds = input_pipeline.create_train_dataset(
      IN32, split, batch_size, data_dir=DATA_DIR, **kwargs)
  it = input_pipeline.as_numpy_iterator(ds)
  return np.concatenate([next(it)['image'] for _ in range(num_batches)])


def _eval_batches(name, split, batch_size, **kwargs):
  ds = input_pipeline.create_eval_dataset(
      name, split, batch_size, data_dir=DATA_DIR, **kwargs)
  return list(input_pipeline.as_numpy_iterator(ds))


def _concat(batches, key):
  return np.concatenate([b[key] for b in batches])


def _eval_images(name, split):
  return _concat(_eval_batches(name, split, 64), 'image')


def _row_set(images):
  """Order-free identity of a set of images, for permutation checks."""
  return sorted(image.tobytes() for image in images)


class PreprocessTest(absltest.TestCase):

  def test_small_images_are_only_scaled(self):
    image = np.arange(32 * 32 * 3, dtype=np.int64) % 256
    image = image.astype(np.uint8).reshape(32, 32, 3)
    out = input_pipeline.preprocess_image(tf.constant(image), 'cifar10')
    self.assertEqual(out.dtype, tf.float32)
    self.assertEqual(out.shape, (32, 32, 3))
    np.testing.assert_allclose(out.numpy(), image / 127.5 - 1.0, atol=1e-6)
    self.assertEqual(out.numpy().min(), -1.0)
    self.assertEqual(out.numpy().max(), 1.0)

  def test_full_size_image_resized_and_center_cropped(self):
    # Every column holds its own index (times 4), so the surviving columns
    # show where the crop was taken.
    height, width = 48, 64
    columns = np.arange(width, dtype=np.uint8) * 4
    image = np.broadcast_to(columns[None, :, None], (height, width, 3))
    out = input_pipeline.preprocess_image(
        tf.constant(image), 'imagenet2012').numpy()
    self.assertEqual(out.shape, (32, 32, 3))
    self.assertEqual(out.dtype, np.float32)
    self.assertBetween(out.min(), -1.0, 1.0)
    self.assertBetween(out.max(), -1.0, 1.0)
    # Back to source column positions; constant down each column.
    source_columns = (out[:, :, 0] + 1.0) * 127.5 / 4
    self.assertLess(np.ptp(source_columns, axis=0).max(), 1e-3)
    source_column = source_columns[0]
    self.assertTrue(np.all(np.diff(source_column) > 0))
    # Short side 48 -> 32 scales by 2/3: the width becomes 43, of which 5
    # columns go on the left and 6 on the right, so the output spans about
    # source columns 7.7 to 53.8 instead of 0.3 to 62.7 without a crop.
    self.assertBetween(source_column[0], 6.5, 9.0)
    self.assertBetween(source_column[-1], 52.5, 55.0)
    # The crop is centered, to within half a resized column.
    self.assertAlmostEqual(source_column.mean(), (width - 1) / 2, delta=1.0)

  def test_full_size_tall_image_crops_rows(self):
    rows = np.arange(64, dtype=np.uint8) * 4
    image = np.broadcast_to(rows[:, None, None], (64, 40, 3))
    out = input_pipeline.preprocess_image(
        tf.constant(image), 'imagenet2012').numpy()
    self.assertEqual(out.shape, (32, 32, 3))
    source_row = (out[:, 0, 0] + 1.0) * 127.5 / 4
    # 40 -> 32 scales by 0.8: 64 rows become 51, of which 9 go at the top
    # (about 11.3 source rows) and 10 at the bottom.
    self.assertBetween(source_row[0], 10.5, 12.5)
    self.assertBetween(source_row[-1], 49.5, 51.5)
    self.assertAlmostEqual(source_row.mean(), 31.5, delta=1.0)

  def test_full_size_path_keeps_a_32x32_image(self):
    image = np.random.RandomState(0).randint(0, 256, (32, 32, 3), np.uint8)
    out = input_pipeline.preprocess_image(tf.constant(image), 'imagenet2012')
    np.testing.assert_allclose(out.numpy(), image / 127.5 - 1.0, atol=1e-5)

  def test_unsupported_name(self):
    with self.assertRaisesRegex(ValueError, 'cifar10'):
      input_pipeline.preprocess_image(
          tf.zeros([32, 32, 3], tf.uint8), 'mnist')


class BuilderTest(absltest.TestCase):

  def test_resolve_data_dir(self):
    with mock.patch.dict(os.environ, {'TFDS_DATA_DIR': '/from/env'}):
      self.assertEqual(input_pipeline.resolve_data_dir('/given'), '/given')
      self.assertEqual(input_pipeline.resolve_data_dir(None), '/from/env')
    with mock.patch.dict(os.environ):
      os.environ.pop('TFDS_DATA_DIR', None)
      self.assertIsNone(input_pipeline.resolve_data_dir(None))

  def test_unsupported_name(self):
    with self.assertRaisesRegex(ValueError, 'imagenet_resized/32x32'):
      input_pipeline.get_builder('mnist', DATA_DIR)

  def test_not_prepared(self):
    with tempfile.TemporaryDirectory() as empty:
      with self.assertRaises(FileNotFoundError) as raised:
        input_pipeline.get_builder('cifar10', empty)
      message = str(raised.exception)
      self.assertIn('TFDS_DATA_DIR', message)
      self.assertIn('cifar10', message)
      self.assertIn(empty, message)
      self.assertIn('tfds build cifar10', message)

  def test_imagenet2012_not_prepared(self):
    with tempfile.TemporaryDirectory() as empty:
      with self.assertRaises(FileNotFoundError) as raised:
        input_pipeline.get_builder('imagenet2012', empty)
      message = str(raised.exception)
      self.assertIn('TFDS_DATA_DIR', message)
      self.assertIn('ILSVRC2012_img_train.tar', message)
      self.assertIn('ILSVRC2012_img_val.tar', message)
      self.assertIn(os.path.join(empty, 'downloads', 'manual'), message)

  @needs_cifar
  def test_num_examples(self):
    self.assertEqual(
        input_pipeline.num_examples('cifar10', 'test', DATA_DIR), 10_000)
    self.assertEqual(
        input_pipeline.num_examples('cifar10', 'test[:37]', DATA_DIR), 37)


@needs_in32
class TrainDatasetTest(absltest.TestCase):

  def test_shapes_and_range(self):
    ds = input_pipeline.create_train_dataset(IN32, 'train', 8,
                                             data_dir=DATA_DIR)
    batch = next(input_pipeline.as_numpy_iterator(ds))
    self.assertEqual(set(batch), {'image'})
    self.assertEqual(batch['image'].shape, (8, 32, 32, 3))
    self.assertEqual(batch['image'].dtype, np.float32)
    self.assertGreaterEqual(batch['image'].min(), -1.0)
    self.assertLessEqual(batch['image'].max(), 1.0)

  def test_deterministic(self):
    first = _train_images(3, seed=5)
    second = _train_images(3, seed=5)
    np.testing.assert_array_equal(first, second)

  def test_different_seed_gives_different_order(self):
    self.assertFalse(
        np.array_equal(_train_images(1, seed=0), _train_images(1, seed=1)))

  def test_resume_equals_dropping_batches(self):
    full = _train_images(4)
    resumed = _train_images(2, start_example=2 * 8)
    np.testing.assert_array_equal(resumed, full[16:32])

  def test_resume_across_epoch_boundary(self):
    # 20 examples per epoch, batches of 8: batch 3 spans epochs 0 and 1.
    full = _train_images(7, split='train[:20]')
    for start in (5, 16, 20, 24, 40):
      resumed = _train_images(2, split='train[:20]', start_example=start)
      np.testing.assert_array_equal(resumed, full[start:start + 16],
                                    err_msg=f'start_example={start}')

  def test_each_epoch_is_a_new_permutation(self):
    flat = _train_images(15, split='train[:20]', batch_size=4)
    epochs = [flat[0:20], flat[20:40], flat[40:60]]
    reference = _row_set(_eval_images(IN32, 'train[:20]'))
    for epoch in epochs:
      self.assertEqual(_row_set(epoch), reference)
    self.assertFalse(np.array_equal(epochs[0], epochs[1]))
    self.assertFalse(np.array_equal(epochs[1], epochs[2]))

  def test_processes_read_disjoint_parts(self):
    # One batch of 10 is exactly one epoch of each process's half.
    parts = [
        _train_images(1, split='train[:20]', batch_size=10,
                      process_index=i, process_count=2) for i in range(2)
    ]
    self.assertEqual(_row_set(np.concatenate(parts)),
                     _row_set(_eval_images(IN32, 'train[:20]')))

  @unittest.skipUnless(os.environ.get('WGAN_JAX_SLOW_TESTS'),
                       'set WGAN_JAX_SLOW_TESTS=1: importing TF again takes '
                       'over 10 s')
  def test_deterministic_across_processes(self):
    # Resuming happens in a new process, so the order must not depend on
    # anything but the arguments.
    script = (
        'import sys\n'
        'import numpy as np\n'
        'from wgan_jax import input_pipeline as ip\n'
        f'ds = ip.create_train_dataset({IN32!r}, "train[:20]", 8, '
        f'data_dir={DATA_DIR!r}, seed=3, start_example=16)\n'
        'it = ip.as_numpy_iterator(ds)\n'
        'images = np.concatenate([next(it)["image"] for _ in range(2)])\n'
        'np.save(sys.stdout.buffer, images)\n'
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    out = subprocess.run([sys.executable, '-c', script], cwd=_REPO, env=env,
                         check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
      f.write(out)
      f.seek(0)
      other = np.load(f)
    here = _train_images(4, split='train[:20]', seed=3)
    np.testing.assert_array_equal(other, here[16:32])

  def test_bad_arguments(self):
    with self.assertRaises(ValueError):
      input_pipeline.create_train_dataset(IN32, 'train', 0,
                                          data_dir=DATA_DIR)
    with self.assertRaises(ValueError):
      input_pipeline.create_train_dataset(IN32, 'train', 8,
                                          data_dir=DATA_DIR, start_example=-1)


@needs_cifar
class EvalDatasetTest(absltest.TestCase):

  def test_every_example_once_in_order(self):
    batches = _eval_batches('cifar10', 'test[:37]', 16)
    self.assertEqual([len(b['index']) for b in batches], [16, 16, 5])
    for batch in batches:
      self.assertEqual(set(batch), {'image', 'label', 'index'})
      self.assertEqual(batch['image'].dtype, np.float32)
      self.assertEqual(batch['image'].shape[1:], (32, 32, 3))
      self.assertEqual(batch['label'].dtype, np.int32)
      self.assertEqual(batch['index'].dtype, np.int64)
    np.testing.assert_array_equal(_concat(batches, 'index'), np.arange(37))
    reference = list(tfds.as_numpy(tfds.load(
        'cifar10', split='test[:37]', data_dir=DATA_DIR,
        shuffle_files=False)))
    np.testing.assert_array_equal(_concat(batches, 'label'),
                                  [r['label'] for r in reference])
    np.testing.assert_allclose(
        _concat(batches, 'image'),
        np.stack([r['image'] for r in reference]) / 127.5 - 1.0, atol=1e-6)

  def test_order_across_shards(self):
    # cifar10 test has 2,500 examples per shard: this slice spans two.
    across = _eval_images('cifar10', 'test[2490:2510]')
    halves = np.concatenate([_eval_images('cifar10', 'test[2490:2500]'),
                             _eval_images('cifar10', 'test[2500:2510]')])
    np.testing.assert_array_equal(across, halves)

  def test_processes_split_the_pass(self):
    whole = _eval_batches('cifar10', 'test[:37]', 16)
    parts = [
        _eval_batches('cifar10', 'test[:37]', 16, process_index=i,
                      process_count=2) for i in range(2)
    ]
    for key in ('image', 'label', 'index'):
      np.testing.assert_array_equal(
          np.concatenate([_concat(p, key) for p in parts]),
          _concat(whole, key), err_msg=key)


@needs_cifar
class ProcessSplitTest(absltest.TestCase):

  def test_single_process_is_the_split(self):
    self.assertEqual(input_pipeline.process_split('train', 0, 1), 'train')

  def test_parts_are_disjoint_and_cover(self):
    def ids(split):
      ds = tfds.load('cifar10', split=split, data_dir=DATA_DIR,
                     shuffle_files=False)
      return [x['id'] for x in tfds.as_numpy(ds)]

    parts = [ids(input_pipeline.process_split('test[:37]', i, 3))
             for i in range(3)]
    for i in range(3):
      for j in range(i + 1, 3):
        self.assertEmpty(set(parts[i]) & set(parts[j]))
    self.assertEqual(sum(parts, []), ids('test[:37]'))
    self.assertLessEqual(max(map(len, parts)) - min(map(len, parts)), 1)

  def test_bad_index(self):
    with self.assertRaises(ValueError):
      input_pipeline.process_split('train', 2, 2)
    with self.assertRaises(ValueError):
      input_pipeline.process_split('train', 0, 0)


if __name__ == '__main__':
  absltest.main()
