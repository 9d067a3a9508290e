"""Feature export: every example once, in order, batch-independent."""

import json
import os
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import smoke
from wgan_jax import checkpoints
from wgan_jax import export
from wgan_jax import input_pipeline
from wgan_jax import models


class ExportTest(absltest.TestCase):

  def test_rows_are_the_examples_in_order(self):
    n = 37  # Divisible neither by the batch nor by the 2 devices.

    def fake_dataset(name, split, batch_size, data_dir=None):
      del name, split, data_dir
      index = np.arange(n)
      # Every pixel of example i holds i, so its "features" name it.
      images = np.broadcast_to(index[:, None, None, None].astype(np.float32),
                               (n, 32, 32, 3))
      return tf.data.Dataset.from_tensor_slices(
          dict(image=images, label=index % 10, index=index)).batch(batch_size)

    self.enter_context(absltest.mock.patch.object(
        input_pipeline, 'create_eval_dataset', fake_dataset))
    self.enter_context(absltest.mock.patch.object(
        input_pipeline, 'num_examples', lambda *a: n))
    with tempfile.TemporaryDirectory() as out:
      export.export(out, 'pixels', splits=['test'], batch_size=15)
      feats = np.load(os.path.join(out, 'test_features.npy'))
      self.assertEqual(feats.shape, (n, 3072))
      np.testing.assert_array_equal(feats[:, 0], np.arange(n))
      np.testing.assert_array_equal(feats[:, -1], np.arange(n))
      self.assertFalse(os.path.exists(
          os.path.join(out, 'test_features.npy.partial')))

  def test_pixels_match_tfds_order(self):
    with tempfile.TemporaryDirectory() as out:
      layout = export.export(out, 'pixels', splits=['test[:37]'],
                             batch_size=16)
      self.assertEqual(layout['splits']['test']['rows'], 37)
      feats = np.load(os.path.join(out, 'test_features.npy'))
      labels = np.load(os.path.join(out, 'test_labels.npy'))
      ds = tfds.load('cifar10', split='test[:37]', shuffle_files=False,
                     data_dir=os.environ['TFDS_DATA_DIR'])
      ref = list(tfds.as_numpy(ds))
      np.testing.assert_array_equal(labels, [r['label'] for r in ref])
      images = np.stack([r['image'] for r in ref]) / 127.5 - 1
      np.testing.assert_allclose(feats, images.reshape(37, -1), atol=1e-6)

  def test_critic_features_do_not_depend_on_batch(self):
    with tempfile.TemporaryDirectory() as tmp:
      config = smoke.get_config()
      checkpoints.save_config(tmp, config)
      out = []
      for batch in (7, 16):
        feats_dir = os.path.join(tmp, f'b{batch}')
        layout = export.export(feats_dir, 'random', workdir=tmp,
                               splits=['test[:20]'], batch_size=batch)
        out.append(np.load(os.path.join(feats_dir, 'test_features.npy')))
      self.assertEqual(out[0].shape, (20, layout['total_dim']))
      np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
      with open(os.path.join(feats_dir, 'layout.json')) as f:
        self.assertEqual(json.load(f)['step'], 0)

  def test_random_from_a_config_is_that_runs_initial_critic(self):
    # --config=FILE --source=random needs no workdir and gives the same
    # features as the initial weights of a run with that config.
    config = smoke.get_config()
    with tempfile.TemporaryDirectory() as tmp:
      checkpoints.save_config(tmp, config)
      feats = []
      sources = (('w', dict(workdir=tmp)), ('c', dict(config=config)))
      for name, kwargs in sources:
        layout = export.export(os.path.join(tmp, name), 'random',
                               splits=['test[:9]'], batch_size=9, **kwargs)
        feats.append(np.load(os.path.join(tmp, name, 'test_features.npy')))
      self.assertIsNone(layout['workdir'])
      np.testing.assert_array_equal(feats[0], feats[1])
      config.seed += 1  # Another seed, other weights: the check can fail.
      export.export(os.path.join(tmp, 's'), 'random', config=config,
                    splits=['test[:9]'], batch_size=9)
      other = np.load(os.path.join(tmp, 's', 'test_features.npy'))
      self.assertFalse(np.allclose(other, feats[0]))
      with self.assertRaisesRegex(ValueError, 'needs --workdir'):
        export.export(os.path.join(tmp, 'x'), 'checkpoint', config=config)

  def test_recomputed_batch_stats_of_one_batch(self):
    # With a split of exactly one full batch, the recomputed statistics are
    # that batch's: evaluation mode then reproduces training mode on it.
    config = smoke.get_config()
    config.model.critic_norm = 'batch'
    gen, critic = models.create_models(config.model)
    del gen
    x = jnp.zeros((2, 32, 32, 3))
    variables = critic.init(jax.random.PRNGKey(0), x)
    new = export.recompute_batch_stats(critic, variables, 'cifar10',
                                       'test[:16]', 16, None)
    ds = input_pipeline.create_eval_dataset('cifar10', 'test[:16]', 16)
    images = next(input_pipeline.as_numpy_iterator(ds))['image']
    train_out, _ = critic.apply(variables, images, train=True,
                                mutable=['batch_stats'])
    eval_out = critic.apply(new, images, train=False)
    np.testing.assert_allclose(eval_out, train_out, rtol=1e-4, atol=1e-4)
    self.assertFalse(np.allclose(critic.apply(variables, images, train=False),
                                 train_out, atol=1e-3))

  def test_no_checkpoint_is_a_clear_error(self):
    with tempfile.TemporaryDirectory() as tmp:
      checkpoints.save_config(tmp, smoke.get_config())
      with self.assertRaisesRegex(FileNotFoundError, 'No checkpoint'):
        export.export(os.path.join(tmp, 'f'), 'checkpoint', workdir=tmp)

  def test_two_slices_of_one_split_are_refused(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, 'f')
      with self.assertRaisesRegex(ValueError, 'train more than once'):
        export.export(out, 'pixels', splits=('train[:10]', 'train[10:20]'))
      self.assertFalse(os.path.exists(out))  # Refused before any write.
      with self.assertRaisesRegex(ValueError, 'combines the splits test, '
                                  'train'):
        export.export(out, 'pixels', splits=('train[:10]+test[:10]', 'test'))
      self.assertFalse(os.path.exists(out))

  def test_an_export_in_the_folder_is_refused_or_replaced_whole(self):
    with tempfile.TemporaryDirectory() as out:
      export.export(out, 'pixels', splits=['test[:5]'], batch_size=5)
      results = os.path.join(out, 'protocol_results.json')
      with open(results, 'w') as f:
        f.write('{}')
      with self.assertRaisesRegex(FileExistsError, '--overwrite'):
        export.export(out, 'pixels', splits=['test[:3]'], batch_size=5)
      self.assertTrue(os.path.exists(results))  # Nothing lost.
      self.assertEqual(np.load(os.path.join(out, 'test_features.npy')).shape,
                       (5, 3072))
      export.export(out, 'pixels', splits=['test[:3]'], batch_size=5,
                    overwrite=True)
      # The results described the old features: they go with them.
      self.assertFalse(os.path.exists(results))
      self.assertEqual(np.load(os.path.join(out, 'test_features.npy')).shape,
                       (3, 3072))

  def test_an_interrupted_export_leaves_no_layout_and_no_partial_file(self):
    with tempfile.TemporaryDirectory() as out:
      export.export(out, 'pixels', splits=['test[:5]'], batch_size=5)

      def interrupted(*args, **kwargs):
        del args, kwargs
        raise KeyboardInterrupt

      with absltest.mock.patch.object(input_pipeline, 'as_numpy_iterator',
                                      interrupted):
        with self.assertRaises(KeyboardInterrupt):
          export.export(out, 'pixels', splits=['test[:5]'], batch_size=5,
                        overwrite=True)
      # Without layout.json linear_eval refuses the folder, rather than
      # scoring one split of the old export with one of the new.
      self.assertEqual(os.listdir(out), [])

  def test_a_failed_export_removes_the_folder_it_made(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, 'new', 'f')
      with self.assertRaisesRegex(Exception, 'no_such_dataset'):
        export.export(out, 'pixels', dataset='no_such_dataset',
                      splits=['test[:5]'])
      self.assertFalse(os.path.exists(out))


if __name__ == '__main__':
  absltest.main()
