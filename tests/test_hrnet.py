"""HRNet: its parameter counts against the reference code's, the stage, module and block
plan of both sizes, one fuse layer across three resolutions against NumPy (the contract
every network keeps: tests/test_networks.py).
Training on the phantom demo (slow) is in tests/test_compared_networks.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.baselines.hrnet import Fuse
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.models.layers import make_norm

import numpy_ref as ref


def _config(base=2, size='small_v2', **model):
  config = load_config('configs/default.py', 'variant=hrnet')
  config.model.update(base_channels=base, size=size, **model)
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter counts and structure -------------------------------------------------------


@pytest.mark.parametrize(
  ('base', 'size', 'expected'),
  [(48, 'full', 65_844_529), (18, 'full', 9_634_819), (18, 'small_v2', 3_933_279)],
)
def test_reference_configurations_have_the_reference_counts_without_the_head_bias(
  base, size, expected
):
  """seg_hrnet.py's HighResolutionNet with a 1-channel stem and 1 class has 65,845,249
  (W48), 9,635,089 (W18) and 3,933,549 (W18-Small-v2) parameters; the project drops the
  bias of last_layer's 1x1 conv, which a BatchNorm follows: 15 C = 720 or 270 fewer."""
  config = load_config('configs/default.py', 'variant=hrnet')
  assert (config.model.base_channels, config.model.size) == (48, 'full')  # the reference's
  config.model.update(base_channels=base, size=size)
  params = abstract_variables(build_model(config.model), 512)['params']
  assert _count(params) == expected
  c = 15 * base
  assert params['head_conv']['kernel'].shape == (1, 1, c, c) and 'bias' not in params['head_conv']
  assert _count(params['classifier']) == c + 1


@pytest.mark.parametrize(
  ('size', 'bottlenecks', 'modules', 'blocks'),
  [('full', 4, (1, 4, 3), 4), ('small_v2', 2, (1, 3, 2), 2)],
)
def test_stages_modules_and_blocks_follow_the_tables(size, bottlenecks, modules, blocks):
  """HRNetV2: stage 1 of 4 Bottlenecks, stages 2/3/4 of 1/4/3 modules with 4 BasicBlocks
  per branch; W18-Small-v2: 2 Bottlenecks, 1/3/2 modules, 2 BasicBlocks. Every module
  fuses every branch into every other: n (n - 1) / 2 1x1 convs up and sum (i - j) 3x3/2
  convs down."""
  base = 3
  params = abstract_variables(build_model(_config(base, size=size).model), 32)
  params = params['params']
  assert sorted(k for k in params if k.startswith('layer1_')) == [
    f'layer1_{k}' for k in range(bottlenecks)
  ]
  assert params['layer1_0']['conv3']['kernel'].shape == (1, 1, 64, 256)
  for stage, count in zip((2, 3, 4), modules, strict=True):
    names = sorted(k for k in params if k.startswith(f'stage{stage}_'))
    assert names == [f'stage{stage}_{m}' for m in range(count)]
    for name in names:
      module = params[name]
      assert sorted(k for k in module if k != 'fuse') == sorted(
        f'branch{i}_{k}' for i in range(stage) for k in range(blocks)
      )
      for i in range(stage):
        width = base * 2**i
        assert module[f'branch{i}_0']['conv1']['kernel'].shape == (3, 3, width, width)
      convs = [k for k in module['fuse'] if k.endswith('_conv')]
      down = sum(i - j for i in range(stage) for j in range(i))
      assert len(convs) == stage * (stage - 1) // 2 + down
  # transitions: stage 1's 256 channels -> C (3x3) and 2C (3x3/2); then one new branch each
  assert params['transition1_0_conv']['kernel'].shape == (3, 3, 256, base)
  assert params['transition1_1_conv']['kernel'].shape == (3, 3, 256, 2 * base)
  assert params['transition2_2_conv']['kernel'].shape == (3, 3, 2 * base, 4 * base)
  assert params['transition3_3_conv']['kernel'].shape == (3, 3, 4 * base, 8 * base)
  assert not any(k.startswith(('transition2_0', 'transition2_1', 'transition3_0')) for k in params)


# --- one fuse layer against NumPy ---------------------------------------------------------


def _np_conv_bn(x, p, name, stride):
  """Bias-free conv with PyTorch's padding (k - 1) / 2, then training-mode BatchNorm. A
  stride-2 output pixel o sits on input pixel 2 o: the 'same' conv taken at even pixels."""
  y = ref.conv2d(x, p[f'{name}_conv']['kernel'])[:, ::stride, ::stride]
  return ref.batchnorm_train(y, p[f'{name}_bn']['scale'], p[f'{name}_bn']['bias'])


def _np_fuse(xs, p):
  """y_i = relu(sum_j f_ij(x_j)): f_ii = x_i; j > i: 1x1 conv + BN, bilinear up
  (align_corners=False); j < i: (i - j) 3x3/2 conv + BN, ReLU between them."""
  out = []
  for i, target in enumerate(xs):
    total = 0.0
    for j, source in enumerate(xs):
      y = np.asarray(source, np.float64)
      if j > i:
        y = _np_conv_bn(y, p, f'fuse{i}_{j}', 1)
        y = ref.resize_bilinear(y, target.shape[1:3], align_corners=False)
      for k in range(i - j):
        y = _np_conv_bn(y, p, f'fuse{i}_{j}_{k}', 2)
        y = y if k == i - j - 1 else ref.relu(y)
      total = total + y
    out.append(ref.relu(total))
  return out


def test_fuse_across_three_resolutions_equals_numpy():
  """Branches of 3, 6, 12 channels at 8x4, 4x2, 2x1, every target from every source,
  BatchNorm in training mode."""
  rng = np.random.default_rng(1)
  xs = tuple(
    rng.standard_normal((2, 8 // 2**i, 4 // 2**i, 3 * 2**i)).astype(np.float32) for i in range(3)
  )
  fuse = Fuse(make_norm(None, 0.9, ref.EPS, jnp.float32))
  variables = ref.randomize(jax.eval_shape(lambda: fuse.init(jax.random.key(0), xs, False)), seed=2)
  params = variables['params']
  # 3 targets x 3 sources: 3 up-paths (one conv each), 3 down-paths with 1, 1, 2 convs
  assert len([k for k in params if k.endswith('_conv')]) == 7
  out, _ = jax.jit(lambda v, xs: fuse.apply(v, xs, True, mutable=['batch_stats']))(variables, xs)
  expected = _np_fuse(xs, params)
  for got, want, x in zip(out, expected, xs, strict=True):
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- contract -----------------------------------------------------------------------------
