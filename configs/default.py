"""WGAN-GP as its authors recommend it, on 32x32 ImageNet.

Layer-norm critic (the DCGAN 32x32 discriminator: six 3x3 convs, strides
1,2,1,2,1,2, widths 128-128-256-256-512-512), Adam 1e-4 / 0 / 0.9,
n_critic 5, lambda 10, batch 64.

  python -m wgan_jax.main --config=configs/default.py --workdir=runs/default

Hardware: meant for one GPU or a TPU slice (several hours for 100K generator
steps there). On a 2-core CPU a single iteration takes many seconds: use
configs/smoke.py, or narrower widths, to try it out.
Expected result: CIFAR-10 L2-SVM accuracy near the DCGAN critic's 82.8% (all
labels) / 73.8% (400 per class) after full ImageNet-1k training; not yet
measured with this codebase.
"""

import ml_collections


def get_config():
  """Returns the default configuration."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Input: TFDS name, split, and where the prepared data lives (None: the
  # TFDS_DATA_DIR environment variable, else TFDS's default).
  config.dataset = 'imagenet_resized/32x32'
  config.split = 'train'
  config.data_dir = None
  config.shuffle_buffer = 10_000

  config.model = ml_collections.ConfigDict()
  config.model.z_dim = 128  # Standard normal noise.
  config.model.gen_widths = (512, 256, 128)  # 4x4 map, then 8x8, 16x16.
  config.model.gen_kernel = 4
  config.model.critic_widths = (128, 128, 256, 256, 512, 512)
  config.model.critic_strides = (1, 2, 1, 2, 1, 2)
  config.model.critic_kernel = 3
  config.model.critic_norm = 'layer'  # 'layer', 'batch' or 'none'.
  # 'auto': convolutions as patch GEMMs on CPU (much faster there), XLA's own
  # elsewhere; 'xla' or 'matmul' to force one. Same parameters either way.
  config.model.conv_impl = 'auto'
  # Compute dtype of convs and dense layers: 'float32' or 'bfloat16' (mixed
  # precision for GPUs and TPUs: parameters, optimizer state, losses and the
  # gradient penalty stay float32; not faster on CPU). A resume may not
  # change it.
  config.model.dtype = 'float32'
  # 'dcgan' (the convs above, 32x32x3 images) or 'mlp' (the 2-D toy
  # mixtures of wgan_jax.mode_coverage; see configs/toy.py).
  config.model.arch = 'dcgan'

  # 'wgan-gp', 'gan' (the paper's equations 3-4) or 'wgan-clip' (the original
  # WGAN: critic weights clipped to +-clip_value, no penalty).
  config.loss = 'wgan-gp'
  config.gp_weight = 10.0  # lambda.
  config.clip_value = 0.01  # Only for 'wgan-clip'; the WGAN paper's c.
  config.n_critic = 5  # Critic updates per generator update.
  config.batch_size = 64  # Global batch, split over all devices.

  config.optimizer = ml_collections.ConfigDict()
  # 'adam' or 'rmsprop' (the WGAN paper's, with lr 5e-5; ignores b1, b2).
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1 = 0.0
  config.optimizer.b2 = 0.9
  # True: the learning rate falls linearly to 0 at num_steps (used by the
  # toy runs; a resume with another num_steps would change the schedule).
  config.optimizer.linear_decay = False

  config.num_steps = 100_000  # Generator updates.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  config.num_samples = 64  # Fixed-noise sample grid at every checkpoint.
  return config
