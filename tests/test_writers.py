"""Tests for wgan_jax.writers and wgan_jax.fileio."""

import json
import math
import os

import numpy as np
from PIL import Image
import pytest

from wgan_jax import fileio
from wgan_jax import writers


def test_image_grid_shape_and_padding():
  images = np.zeros((5, 4, 3, 3), np.float32)
  grid = writers.image_grid(images, ncols=3)
  # 2 rows x 3 columns of 4x3 tiles with 1px gaps between them.
  assert grid.shape == (2 * 4 + 1, 3 * 3 + 2, 3)
  assert grid.dtype == np.uint8
  assert np.all(grid[4, :, :] == 0)  # horizontal gap
  assert np.all(grid[:, 3, :] == 0)  # vertical gap
  assert np.all(grid[5:, 8:, :] == 0)  # unused sixth cell
  assert np.all(grid[:4, :3] == 128)  # a zero image is mid-grey


def test_image_grid_default_is_near_square():
  grid = writers.image_grid(np.zeros((10, 2, 2, 3), np.float32))
  assert grid.shape == (3 * 2 + 2, 4 * 2 + 3, 3)


def test_image_grid_value_mapping():
  values = np.array([-1.0, 0.0, 1.0, -3.0, 2.0, 0.5, math.nan], np.float32)
  images = np.broadcast_to(values[None, None, :, None], (1, 1, 7, 3))
  grid = writers.image_grid(images)
  np.testing.assert_array_equal(grid[0, :, 0], [0, 128, 255, 0, 255, 191, 0])


def test_save_image_grid_writes_png(tmp_path):
  images = np.linspace(-1, 1, 4 * 8 * 8 * 3).reshape(4, 8, 8, 3)
  path = tmp_path / 'samples.png'
  writers.save_image_grid(images, path, ncols=2)
  with Image.open(path) as picture:
    assert picture.format == 'PNG'
    assert picture.size == (17, 17)
    pixels = np.asarray(picture)
  np.testing.assert_array_equal(pixels, writers.image_grid(images, ncols=2))
  assert os.listdir(tmp_path) == ['samples.png']  # no temp file left behind


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  writer.write_scalars(1, {'critic_loss': np.float32(-2.5), 'gen_loss': 1.25})
  writer.write_scalars(2, {'critic_loss': -1.0, 'wasserstein': 3})
  writer.write_images(2, 'samples', np.zeros((5, 6, 3), np.uint8))
  writer.close()

  records = writers.read_metrics(tmp_path / 'metrics.jsonl')
  assert records == [
      {'step': 1, 'critic_loss': -2.5, 'gen_loss': 1.25},
      {'step': 2, 'critic_loss': -1.0, 'wasserstein': 3},
  ]
  events = os.listdir(tmp_path / 'tensorboard')
  assert len(events) == 1
  assert events[0].startswith('events.out.tfevents.')

  # Imported here, not at the top, so that only this test pays TF's start-up
  # cost (MetricWriter has already loaded it by now).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tags = set()
  for event in tf.compat.v1.train.summary_iterator(
      str(tmp_path / 'tensorboard' / events[0])
  ):
    tags.update((event.step, value.tag) for value in event.summary.value)
  assert tags == {
      (1, 'critic_loss'),
      (1, 'gen_loss'),
      (2, 'critic_loss'),
      (2, 'wasserstein'),
      (2, 'samples'),
  }


def test_metric_writer_appends_across_restarts(tmp_path):
  for step in (1, 2):
    with writers.MetricWriter(tmp_path) as writer:
      writer.write_scalars(step, {'gen_loss': float(step)})
  records = writers.read_metrics(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [1, 2]


def test_metric_writer_drops_records_past_the_start_step(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    for step in (1, 2, 3, 4):
      writer.write_scalars(step, {'gen_loss': float(step)})
  # A resume from the checkpoint at step 2 logs steps 3 and 4 again.
  with writers.MetricWriter(tmp_path, start_step=2) as writer:
    writer.write_scalars(3, {'gen_loss': 30.0})
  records = writers.read_metrics(tmp_path / 'metrics.jsonl')
  assert records == [{'step': 1, 'gen_loss': 1.0},
                     {'step': 2, 'gen_loss': 2.0},
                     {'step': 3, 'gen_loss': 30.0}]
  # A start from scratch keeps nothing of a run that never checkpointed.
  writers.MetricWriter(tmp_path, start_step=0).close()
  assert writers.read_metrics(tmp_path / 'metrics.jsonl') == []


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  writer = writers.MetricWriter(workdir, enabled=False)
  writer.write_scalars(1, {'gen_loss': 1.0})
  writer.write_images(1, 'samples', np.zeros((2, 2, 3), np.uint8))
  writer.flush()
  writer.close()
  assert not workdir.exists()


def test_read_metrics_skips_truncated_last_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "gen_loss": 2.0}\n{"step": 2, "gen_lo')
  assert writers.read_metrics(path) == [{'step': 1, 'gen_loss': 2.0}]


@pytest.mark.parametrize('with_penalty', [False, True])
def test_plot_losses_writes_png(tmp_path, with_penalty):
  records = []
  for step in range(0, 50, 5):
    record = {'step': step, 'critic_loss': -step / 10, 'gen_loss': step / 20}
    if with_penalty:
      record['gradient_penalty'] = 1 / (step + 1)
    records.append(record)
  records.append({'step': 50, 'eval_only_metric': 1.0})
  path = tmp_path / 'losses.png'
  writers.plot_losses(records, path)
  with Image.open(path) as picture:
    assert picture.format == 'PNG'
    width, height = picture.size
  assert width > 100 and height > 100


def test_atomic_write_json_keeps_old_file_on_failure(tmp_path):
  path = tmp_path / 'results.json'
  fileio.atomic_write_json(path, {'b': 1, 'a': [1, 2]})
  before = path.read_text()
  assert before == json.dumps({'a': [1, 2], 'b': 1}, indent=2) + '\n'
  with pytest.raises(TypeError):
    fileio.atomic_write_json(path, {'a': object()})
  assert path.read_text() == before
  assert os.listdir(tmp_path) == ['results.json']


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
  path = tmp_path / 'data.bin'
  fileio.atomic_write_text(path, 'old')

  def fail_midway(f):
    f.write(b'partial')
    raise OSError('disk full')

  with pytest.raises(OSError, match='disk full'):
    fileio.atomic_write_file(path, fail_midway)
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['data.bin']


def test_atomic_save_npy_round_trip(tmp_path):
  path = tmp_path / 'x.npy'
  array = np.arange(12, dtype=np.float32).reshape(3, 4)
  fileio.atomic_save_npy(path, array)
  np.testing.assert_array_equal(np.load(path), array)
  assert os.listdir(tmp_path) == ['x.npy']  # no doubled '.npy' suffix


def test_peak_rss_mib_is_plausible():
  assert 1.0 < fileio.peak_rss_mib() < 1024 * 1024
