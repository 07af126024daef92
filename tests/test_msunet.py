"""MSU-Net: its parameter count against the reference code's, the multi-kernel block and the
whole network against NumPy, its options' checks (the contract every network keeps:
tests/test_networks.py). Training on the phantom demo (slow) is in
tests/test_compared_networks.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import check, load_config
from ecam_jax.errors import ConfigError
from ecam_jax.models.baselines.msunet import MultiKernelBlock
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.models.layers import make_norm

import numpy_ref as ref


def _config(base=4, size=32, config_file='configs/default.py', **model):
  config = load_config(config_file, 'variant=msunet')
  config.model.base_channels = base
  config.model.update(model)
  config.data.image_size = size
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter count ----------------------------------------------------------------------


def test_reference_width_has_the_reference_count_without_conv_bias_before_bn():
  """CN-zdy/MSU_Net's MSU_Net(img_ch=1, output_ch=1) has 47,084,545 parameters; the project
  drops the bias of every conv followed by BatchNorm (4 per block, 5888 in all), which
  leaves 47,078,657. The 1x1 fuse convs, the transposed convs and the head keep theirs."""
  config = load_config('configs/default.py', 'variant=msunet')
  assert config.model.base_channels == 32  # the variant's reference widths 32..512
  variables = abstract_variables(build_model(config.model), 512)
  assert _count(variables['params']) == 47_078_657
  # BatchNorm running statistics: mean and variance per channel of every BN.
  bn_channels = 4 * (32 + 64 + 128 + 256 + 512) + 4 * (256 + 128 + 64 + 32)
  assert _count(variables['batch_stats']) == 2 * bn_channels


def _closed_form(base: int, kernels: tuple[int, int]) -> int:
  """Block(i -> o): per kernel k, conv k*k*i*o + conv k*k*o*o (no bias) + 2 BN (2 o each);
  the 1x1 fuse 2o*o + o. Up-conv 2*2*c*o + o; head 1*1*base + 1."""

  def block(i, o):
    return sum(k * k * i * o + k * k * o * o + 4 * o for k in kernels) + 2 * o * o + o

  widths = [base * m for m in (1, 2, 4, 8, 16)]
  total = block(1, widths[0]) + sum(
    block(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True)
  )
  for low, high in zip(widths[:-1], widths[1:], strict=True):
    total += 4 * high * low + low + block(2 * low, low)
  return total + widths[0] + 1


@pytest.mark.parametrize(('base', 'kernels'), [(4, (3, 7)), (3, (1, 5)), (32, (3, 7))])
def test_parameters_follow_the_closed_form(base, kernels):
  config = _config(base, small_kernel=kernels[0], large_kernel=kernels[1])
  params = abstract_variables(build_model(config.model), 32)['params']
  assert _count(params) == _closed_form(base, kernels)
  assert set(params) == {f'encoder{i}' for i in range(1, 6)} | {
    f'decoder{i}' for i in range(1, 5)
  } | {'head'}
  assert params['encoder1']['block']['branch1_conv0']['Conv_0']['kernel'].shape == (
    kernels[1],
    kernels[1],
    1,
    base,
  )


# --- against NumPy ------------------------------------------------------------------------


def _np_block(x, p, kernels, stats=None):
  """Multi-kernel block in float64: each branch [conv k x k -> BN -> ReLU] x 2, concat,
  1x1 conv with bias. stats None: training-mode BN; else BN with these running stats."""
  branches = []
  for b, k in enumerate(kernels):
    y = x
    for i in range(2):
      q = p[f'branch{b}_conv{i}']
      assert q['Conv_0']['kernel'].shape[:2] == (k, k)
      y = ref.conv2d(y, q['Conv_0']['kernel'])
      bn = q['BatchNorm_0']
      if stats is None:
        y = ref.batchnorm_train(y, bn['scale'], bn['bias'])
      else:
        st = stats[f'branch{b}_conv{i}']['BatchNorm_0']
        y = ref.batchnorm_eval(y, bn['scale'], bn['bias'], st['mean'], st['var'])
      y = ref.relu(y)
    branches.append(y)
  return ref.conv2d(np.concatenate(branches, -1), p['fuse']['kernel'], bias=p['fuse']['bias'])


@pytest.mark.parametrize('train_mode', [True, False])
def test_multi_kernel_block_equals_numpy(train_mode):
  kernels = (3, 7)
  block = MultiKernelBlock(
    features=5, norm=make_norm(None, 0.9, ref.EPS, jnp.float32), kernels=kernels
  )
  x = np.random.default_rng(1).standard_normal((2, 9, 10, 3)).astype(np.float32)
  variables = jax.device_get(block.init(jax.random.key(0), x, False))
  params = ref.randomize(variables['params'], seed=2)
  stats = jax.tree.map(lambda v: np.abs(v) + 0.5, ref.randomize(variables['batch_stats'], 3))
  out, _ = block.apply(
    {'params': params, 'batch_stats': stats}, x, train_mode, mutable=['batch_stats']
  )
  expected = _np_block(x, params, kernels, None if train_mode else stats)
  assert out.shape == (2, 9, 10, 5)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _np_msunet(x, p, kernels):
  """The whole network in float64 (training-mode BN), wired as the reference's forward:
  encoder blocks with 2x2 max-pools between them; each decoder level a 2x2 transposed conv,
  concat [skip, up], a block; 1x1 head."""
  skips = []
  for level in range(1, 6):
    if level > 1:
      b, h, w, c = x.shape
      x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = _np_block(x, p[f'encoder{level}']['block'], kernels)
    skips.append(x)
  skips.pop()
  for level in range(1, 5):
    up = p[f'decoder{level}']['up']
    x = ref.up_conv_2x2(x, up['kernel'], up['bias'])
    x = _np_block(np.concatenate([skips.pop(), x], -1), p[f'decoder{level}']['block'], kernels)
  return ref.conv2d(x, p['head']['kernel'], bias=p['head']['bias'])


def test_whole_network_equals_numpy():
  config = _config(base=2, small_kernel=3, large_kernel=5)
  model = build_model(config.model)
  params = ref.randomize(abstract_variables(model, 32)['params'], seed=4, scale=0.4)
  stats = ref.host_variables(abstract_variables(model, 32))['batch_stats']
  x = np.random.default_rng(5).standard_normal((2, 32, 32, 1)).astype(np.float32)
  out, _ = model.apply({'params': params, 'batch_stats': stats}, x, True, mutable=['batch_stats'])
  assert out['side_logits'] == ()
  expected = _np_msunet(x, params, (3, 5))
  assert out['logits'].shape == expected.shape == (2, 32, 32, 1)
  assert out['logits'].dtype == jnp.float32
  np.testing.assert_allclose(out['logits'], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


# --- contract -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  ('key', 'value'),
  [('small_kernel', 0), ('large_kernel', 6), ('large_kernel', 4)],
)
def test_kernel_options_are_checked(key, value):
  config = load_config('configs/default.py', 'variant=msunet')
  check(config)
  config.model[key] = value
  with pytest.raises(ConfigError, match=rf'config\.model\.{key}\b'):
    check(config)
