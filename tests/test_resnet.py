"""The shared ResNet encoder (models/baselines/resnet.py): parameter counts against
torchvision's published ones and a closed form, BasicBlock and Bottleneck (dilated,
strided, with and without the projection shortcut) against NumPy, stage strides, the
dilated stages against the strided network, and remat."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.models.baselines import resnet_options
from ecam_jax.models.baselines.resnet import (
  DEPTHS,
  BasicBlock,
  Bottleneck,
  ResNet,
  stage_channels,
)
from ecam_jax.models.layers import make_norm

import numpy_ref as ref

NORM = make_norm(None, 0.9, ref.EPS, jnp.float32)


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _abstract(model, shape=(1, 64, 64, 1)):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), False))


# --- parameter counts ---------------------------------------------------------------------

# torchvision's published totals (3 input channels, 1000-class fc): resnet18/34/50/101.
TORCHVISION = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}
FC = {18: 512 * 1000 + 1000, 34: 512 * 1000 + 1000, 50: 2048 * 1000 + 1000, 101: 2048 * 1000 + 1000}


@pytest.mark.parametrize('depth', sorted(TORCHVISION))
def test_backbone_counts_equal_torchvision_without_fc_and_with_a_one_channel_stem(depth):
  """torchvision's total minus its fc and minus the 7x7 stem's two extra input channels
  (2 * 49 * 64): ResNet-50 23,501,760 (baselines: the DeepLabV3+/DA-Net backbone), ResNet-34
  21,278,400 (CE-Net's encoder). torchvision's ResNet convs have no bias, as here. Dilating
  stages moves no parameter (DA-Net's output stride 8)."""
  expected = TORCHVISION[depth] - FC[depth] - 2 * 49 * 64
  for dilate in [(False, False, False), (False, True, True)]:
    model = ResNet(norm=NORM, depth=depth, replace_stride_with_dilation=dilate)
    assert _count(_abstract(model)['params']) == expected
  assert {34: 21_278_400, 50: 23_501_760}.get(depth, expected) == expected


def _closed_form(depth: int, base: int, c_in: int = 1) -> tuple[int, int]:
  """(params, BatchNorm channels). A conv is k*k*i*o (no bias), a BN 2 per channel.
  BasicBlock(i -> w): 3x3 i->w, 3x3 w->w; Bottleneck(i -> 4w): 1x1 i->w, 3x3 w->w, 1x1 w->4w;
  the first block of a stage adds a 1x1 i->out projection + BN when i != out or it strides."""
  bottleneck = depth >= 50
  counts = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  convs, bn = [(49, c_in, base)], [base]
  i = base
  for stage, n in enumerate(counts):
    w = base * 2**stage
    out = 4 * w if bottleneck else w
    for b in range(n):
      if bottleneck:
        convs += [(1, i, w), (9, w, w), (1, w, out)]
        bn += [w, w, out]
      else:
        convs += [(9, i, w), (9, w, w)]
        bn += [w, w]
      if b == 0 and (stage > 0 or i != out):
        convs.append((1, i, out))
        bn.append(out)
      i = out
  return sum(k * a * o for k, a, o in convs) + 2 * sum(bn), sum(bn)


@pytest.mark.parametrize('depth', sorted(DEPTHS))
@pytest.mark.parametrize('base', [4, 6])
def test_parameters_follow_the_closed_form(depth, base):
  variables = _abstract(ResNet(norm=NORM, depth=depth, base_width=base))
  params, bn_channels = _closed_form(depth, base)
  assert _count(variables['params']) == params
  assert _count(variables['batch_stats']) == 2 * bn_channels


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ('dilate', 'strides'),
  [
    ((False, False, False), (4, 8, 16, 32)),
    ((False, False, True), (4, 8, 16, 16)),  # DeepLabV3+: output stride 16
    ((False, True, True), (4, 8, 8, 8)),  # DA-Net: output stride 8
  ],
)
@pytest.mark.parametrize('depth', [18, 50])
def test_stage_strides_and_widths(depth, dilate, strides):
  model = ResNet(norm=NORM, depth=depth, base_width=4, replace_stride_with_dilation=dilate)
  variables = _abstract(model, (1, 64, 96, 1))
  x = jax.ShapeDtypeStruct((2, 64, 96, 1), jnp.float32)
  features = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  widths = (4, 8, 16, 32) if depth == 18 else (16, 32, 64, 128)
  assert stage_channels(depth, 4) == widths
  assert [f.shape for f in features] == [
    (2, 64 // s, 96 // s, c) for s, c in zip(strides, widths, strict=True)
  ]


# --- blocks against NumPy -----------------------------------------------------------------


def _conv(x, w, stride=1, dilation=1):
  """PyTorch's Conv2d(padding=dilation * (k - 1) // 2, stride, dilation), no bias, float64:
  out[i] = sum_t x[stride * i + dilation * t - pad] w[t], zeros outside."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  k = w.shape[0]
  pad = dilation * (k - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  b, h, wd, _ = x.shape
  oh, ow = (
    (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1,
    (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1,
  )
  out = np.zeros((b, oh, ow, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      rows = slice(i * dilation, i * dilation + stride * (oh - 1) + 1, stride)
      cols = slice(j * dilation, j * dilation + stride * (ow - 1) + 1, stride)
      out += xp[:, rows, cols] @ w[i, j]
  return out


def _bn(x, p):
  return ref.batchnorm_train(x, p['scale'], p['bias'])


def _np_basic(x, p, stride, dilation, first):
  """torchvision BasicBlock, dilated as in the a-trous rule: conv1 (stride, the previous
  dilation) -> BN -> ReLU -> conv2 (the stage's dilation) -> BN, + shortcut, ReLU."""
  y = ref.relu(_bn(_conv(x, p['conv1']['kernel'], stride, first), p['bn1']))
  y = _bn(_conv(y, p['conv2']['kernel'], 1, dilation), p['bn2'])
  return ref.relu(y + _np_shortcut(x, p, stride))


def _np_bottleneck(x, p, stride, dilation, first):
  """torchvision Bottleneck (v1.5): 1x1 -> BN -> ReLU -> 3x3 (stride, dilation `first`) ->
  BN -> ReLU -> 1x1 -> BN, + shortcut, ReLU. `dilation` reaches no conv of this block."""
  del dilation
  y = ref.relu(_bn(_conv(x, p['conv1']['kernel']), p['bn1']))
  y = ref.relu(_bn(_conv(y, p['conv2']['kernel'], stride, first), p['bn2']))
  y = _bn(_conv(y, p['conv3']['kernel']), p['bn3'])
  return ref.relu(y + _np_shortcut(x, p, stride))


def _np_shortcut(x, p, stride):
  if 'downsample' not in p:
    return np.asarray(x, np.float64)
  return _bn(_conv(x, p['downsample']['kernel'], stride), p['downsample_bn'])


BLOCKS = {'basic': (BasicBlock, _np_basic, 1), 'bottleneck': (Bottleneck, _np_bottleneck, 4)}


@pytest.mark.parametrize(
  ('kind', 'c_in', 'stride', 'dilation', 'first', 'projection'),
  [
    ('basic', 3, 1, 2, 1, True),  # first block of a dilated stage: width changes
    ('basic', 4, 1, 2, 2, False),  # later block of a dilated stage: identity shortcut
    ('basic', 3, 2, 1, 1, True),  # strided first block
    ('bottleneck', 16, 1, 2, 2, False),  # dilated, identity shortcut
    ('bottleneck', 8, 1, 2, 1, True),  # first block of a dilated stage
    ('bottleneck', 8, 2, 1, 1, True),  # strided (on the 3x3: v1.5)
    ('bottleneck', 16, 1, 4, 2, False),
  ],
)
def test_block_equals_numpy(kind, c_in, stride, dilation, first, projection):
  cls, np_block, expansion = BLOCKS[kind]
  block = cls(features=4, norm=NORM, stride=stride, dilation=dilation, first_dilation=first)
  x = np.random.default_rng(1).standard_normal((2, 10, 12, c_in)).astype(np.float32)
  variables = jax.device_get(block.init(jax.random.key(0), x, False))
  assert ('downsample' in variables['params']) == projection
  params = ref.randomize(variables['params'], seed=2)
  out, _ = block.apply(
    {'params': params, 'batch_stats': variables['batch_stats']}, x, True, mutable=['batch_stats']
  )
  expected = np_block(x, params, stride, dilation, first)
  assert out.shape == expected.shape == (2, 10 // stride, 12 // stride, 4 * expansion)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# --- dilation against stride --------------------------------------------------------------


def _eval_variables(model, seed):
  """Random parameters and running statistics (variances > 0), for eval-mode BatchNorm."""
  variables = ref.randomize(_abstract(model), seed=seed, scale=0.3)
  variables['batch_stats'] = jax.tree.map(lambda v: np.abs(v) + 0.5, variables['batch_stats'])
  return variables


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize(
  ('dilate', 'steps'), [((False, False, True), (1, 1, 1, 2)), ((False, True, True), (1, 1, 2, 4))]
)
def test_dilated_stages_equal_the_strided_network_at_the_kept_pixels(depth, dilate, steps):
  """The a-trous rule that `replace_stride_with_dilation` follows: with the same weights
  (eval-mode BatchNorm, which is pointwise), the dilated network's feature at every
  step-th pixel is the strided network's feature. It fails if the first block of a dilated
  stage used the new dilation, or a later block the old one."""
  strided = ResNet(norm=NORM, depth=depth, base_width=4)
  dilated = ResNet(norm=NORM, depth=depth, base_width=4, replace_stride_with_dilation=dilate)
  variables = _eval_variables(strided, seed=3)
  x = np.random.default_rng(4).standard_normal((2, 64, 96, 1)).astype(np.float32)
  want = jax.jit(strided.apply)(variables, x)
  got = jax.jit(dilated.apply)(variables, x)
  for w, g, step in zip(want, got, steps, strict=True):
    sub = np.asarray(g)[:, ::step, ::step]
    assert sub.shape == w.shape
    np.testing.assert_allclose(sub, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_remat_gives_the_same_features_and_gradients():
  x = np.random.default_rng(5).standard_normal((2, 64, 64, 1)).astype(np.float32)
  results = []
  for remat in (False, True):
    model = ResNet(norm=NORM, depth=18, base_width=4, remat=remat)
    variables = _eval_variables(model, seed=6)

    def loss(params, model=model, variables=variables):
      features, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        x,
        True,
        mutable=['batch_stats'],
      )
      return sum(jnp.sum(f**2) for f in features), features

    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params']))
  # Recomputation reorders float32 sums of gradients reaching ~20: rounding ~1e-5.
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_unknown_depth_is_refused():
  with pytest.raises(ValueError, match='depth 152'):
    _abstract(ResNet(norm=NORM, depth=152))


def test_the_depth_option_offers_the_depths_built():
  assert tuple(sorted(DEPTHS)) == resnet_options.DEPTHS
