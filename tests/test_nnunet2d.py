"""nnU-Net's 2-D U-Net (`nnunet2d`): the plans nnU-Net's rule gives (worked out by hand
below), nnU-Net's parameter count, the conv-InstanceNorm-LeakyReLU unit, the transposed
conv and the whole network against NumPy, deep supervision's outputs and an input the plan
pads (the contract every network keeps: tests/test_networks.py)."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.baselines.nnunet2d import ConvNormAct, NNUNet2D, TransposedConv
from ecam_jax.models.baselines.nnunet2d_options import NNUNet2DOptions
from ecam_jax.models.baselines.nnunet2d_plan import plan
from ecam_jax.models.build import abstract_variables, build_model

import numpy_ref as ref

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --- the plan ---------------------------------------------------------------------------
# nnU-Net's get_pool_and_conv_props (network_topology.py) with isotropic spacing and
# min_feature_map_size 4, by hand: every side that is >= 8 is halved (ceil) in a step; a
# side alone (the other < 8) only while it is >= 12; the patch is rounded up to multiples
# of 2^halvings per side; stage s has min(32 * 2^s, 512) channels.
S2, S21 = (2, 2), (2, 1)


def test_plan_for_512_square_has_8_stages_down_to_4():
  # 512 256 128 64 32 16 8 -> 4: seven halvings of both sides.
  p = plan(512, 512)
  assert p.num_stages == 8 and p.pools_per_axis == (7, 7) and p.patch_size == (512, 512)
  assert p.strides == ((1, 1),) + (S2,) * 7
  assert p.features == (32, 64, 128, 256, 512, 512, 512, 512)
  assert p.kernel_sizes == ((3, 3),) * 8
  assert p.reduction(7) == (128, 128)


def test_plan_for_320_square_has_7_stages_down_to_5():
  # 320 160 80 40 20 10 -> 5: six halvings (5 < 8 stops).
  p = plan(320, 320)
  assert p.num_stages == 7 and p.patch_size == (320, 320)
  assert p.strides == ((1, 1),) + (S2,) * 6
  assert p.features == (32, 64, 128, 256, 512, 512, 512)


def test_plan_for_a_non_square_input_pools_the_long_side_alone_at_the_end():
  # (512, 160) -> (256, 80) (128, 40) (64, 20) (32, 10) (16, 5): five steps of both sides;
  # then 160's side is 5 < 8, and 16 >= 12 alone -> (8, 5); 8 < 12 alone stops.
  # Halvings (6, 5): 512 = 8 * 64 and 160 = 5 * 32, no rounding.
  p = plan(512, 160)
  assert p.strides == ((1, 1),) + (S2,) * 5 + (S21,)
  assert p.pools_per_axis == (6, 5) and p.patch_size == (512, 160)
  assert p.features == (32, 64, 128, 256, 512, 512, 512)
  assert p.reduction(6) == (64, 32)
  # (320, 256): both sides reach 8 together, (10, 8) -> (5, 4): six steps of both.
  assert plan(320, 256).strides == ((1, 1),) + (S2,) * 6
  assert plan(320, 256).patch_size == (320, 256)


def test_plan_rounds_the_patch_up_to_its_divisors():
  # (200, 72) -> (100, 36) (50, 18) (25, 9) (13, 5); 13 >= 12 alone -> (7, 5); stop.
  # Halvings (5, 4): 200 -> 224 (7 * 32), 72 -> 80 (5 * 16).
  p = plan(200, 72)
  assert p.strides == ((1, 1),) + (S2,) * 4 + (S21,)
  assert p.patch_size == (224, 80)
  # The options' widths: min(4 * 2^s, 16).
  assert plan(64, 64, base_features=4, max_features=16).features == (4, 8, 16, 16, 16)


@pytest.mark.parametrize('size', [(6, 6), (10, 4), (4, 11)])
def test_an_input_without_a_halving_is_refused(size):
  """Sides < 8, or one side alone < 12: nnU-Net's plan has one stage, no U-Net."""
  with pytest.raises(ValueError, match='no downsampling'):
    plan(*size)
  model = NNUNet2D(NNUNet2DOptions())
  with pytest.raises(ValueError, match='no downsampling'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 1))))


# --- parameters -------------------------------------------------------------------------


def _nnunet_count(features, strides, in_channels, classes, bias):
  """PlainConvUNet's parameters (dynamic_network_architectures), layer by layer: encoder
  stages of two conv3x3 (+ bias) -> InstanceNorm (scale, shift) units; decoder stages from
  the bottleneck up: ConvTranspose (kernel = stride, + bias) to the skip's width, two
  units (the first on 2 x skip channels), and a 1x1 seg layer with bias on every stage."""
  b = int(bias)
  unit = lambda i, o: 9 * i * o + b * o + 2 * o
  total, c = 0, in_channels
  for f in features:
    total += unit(c, f) + unit(f, f)
    c = f
  for s in range(len(features) - 1, 0, -1):
    below, skip = features[s], features[s - 1]
    sh, sw = strides[s]
    total += sh * sw * below * skip + b * skip
    total += unit(2 * skip, skip) + unit(skip, skip)
    total += skip * classes + classes
  return total


def _params(size, **options) -> int:
  model = NNUNet2D(NNUNet2DOptions(**options))
  x = jnp.zeros((1, *size, model.options.in_channels))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert 'batch_stats' not in variables  # InstanceNorm: nothing but parameters
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_parameter_count_at_512_is_nnunets():
  """One channel in, 2 classes (nnU-Net's softmax background + foreground), its plan's
  widths and strides (above): 46,324,558 with nnU-Net's conv biases, 11,104 fewer without
  (2 x 2528 encoder convs, 3 x 2016 decoder convs and transposed convs)."""
  features, strides = (32, 64, 128, 256, 512, 512, 512, 512), ((1, 1),) + (S2,) * 7
  assert _nnunet_count(features, strides, 1, 2, bias=True) == 46_324_558
  assert _nnunet_count(features, strides, 1, 2, bias=False) == 46_313_454
  assert _params((512, 512), num_classes=2) == 46_324_558
  assert _params((512, 512), num_classes=2, conv_bias=False) == 46_313_454
  # Every head exists without deep supervision too (nnU-Net builds them all).
  assert _params((512, 512), num_classes=2, deep_supervision=False) == 46_324_558
  # The project's binary setting: 1 logit, 7 heads of 1 output fewer.
  assert _params((512, 512)) == 46_324_558 - (32 + 64 + 128 + 256 + 3 * 512) - 7


def test_parameter_count_of_a_non_square_plan():
  features, strides = (32, 64, 128, 256, 512, 512, 512), ((1, 1),) + (S2,) * 5 + (S21,)
  assert _params((512, 160), num_classes=3) == _nnunet_count(features, strides, 1, 3, True)
  three = _params((200, 72), in_channels=3, base_channels=8, max_channels=64)
  strides = ((1, 1),) + (S2,) * 4 + (S21,)  # (200, 72)'s, above
  assert three == _nnunet_count((8, 16, 32, 64, 64, 64), strides, 3, 1, True)


# --- the blocks against NumPy -----------------------------------------------------------


def _randomized(module, *inputs, seed=1):
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
  return ref.randomize(abstract['params'], seed=seed)


@pytest.mark.parametrize('strides', [(1, 1), (2, 2), (2, 1)])
def test_conv_instance_norm_leaky_relu_unit_against_numpy(strides):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 8, 3)).astype(np.float32) + 0.3
  unit = ConvNormAct(5, strides=strides, epsilon=1e-5, slope=0.01)
  params = _randomized(unit, x)
  out = unit.apply({'params': params}, x)
  p = params
  y = ref.conv2d_torch(x, p['conv']['kernel'], strides, p['conv']['bias'])
  expected = ref.leaky_relu(ref.instance_norm(y, p['norm']['scale'], p['norm']['bias']), 0.01)
  assert out.shape == (2, 6 // strides[0], 8 // strides[1], 5)
  assert (expected < 0).mean() > 0.2  # the negative slope is exercised
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('strides', [(2, 2), (2, 1)])
def test_transposed_conv_against_numpy(strides):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
  up = TransposedConv(4, strides)
  params = _randomized(up, x)
  out = up.apply({'params': params}, x)
  expected = ref.conv_transpose2d(x, params['kernel'], params['bias'], strides)
  assert out.shape == (2, 3 * strides[0], 4 * strides[1], 4)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


# --- the whole network --------------------------------------------------------------------


def _np_network(x, p, plan_, convs=2):
  """PlainConvUNet's forward pass in float64 from the plan: (logits, side logits from the
  highest resolution down)."""

  def stage(y, q, strides):
    for i in range(convs):
      c = q[f'conv{i}']
      y = ref.conv2d_torch(y, c['conv']['kernel'], strides if i == 0 else (1, 1), c['conv']['bias'])
      y = ref.leaky_relu(ref.instance_norm(y, c['norm']['scale'], c['norm']['bias']))
    return y

  skips = []
  for s in range(plan_.num_stages):
    x = stage(x, p[f'encoder{s}'], plan_.strides[s])
    skips.append(x)
  y, heads = skips[-1], []
  for s in range(plan_.num_stages - 2, -1, -1):
    d = p[f'decoder{s}']
    up = ref.conv_transpose2d(y, d['up']['kernel'], d['up']['bias'], plan_.strides[s + 1])
    y = stage(np.concatenate([up, skips[s]], axis=-1), d['convs'], (1, 1))
    heads.append(ref.conv2d(y, p[f'head{s}']['kernel'], bias=p[f'head{s}']['bias']))
  return heads[-1], heads[-2::-1]


def test_whole_network_against_numpy_non_square_with_deep_supervision():
  """24 x 8, 2 channels in, 3 classes: (24, 8) -> (12, 4) -> (6, 4) (the short side stops),
  strides (2, 2), (2, 1); the side output is stage 1's head at 12 x 4."""
  options = NNUNet2DOptions(in_channels=2, num_classes=3, base_channels=3)
  model = NNUNet2D(options)
  x = np.random.default_rng(2).standard_normal((2, 24, 8, 2)).astype(np.float32)
  params = _randomized(model, x, seed=3)
  out = jax.jit(model.apply)({'params': params}, x)
  p = plan(24, 8, 2, 3)
  assert p.strides == ((1, 1), S2, S21)
  logits, sides = _np_network(x, params, p)
  assert out['logits'].shape == (2, 24, 8, 3) and out['logits'].dtype == jnp.float32
  assert [s.shape for s in out['side_logits']] == [(2, 12, 4, 3)]
  np.testing.assert_allclose(out['logits'], logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(out['side_logits'][0], sides[0], atol=1e-4, rtol=1e-4)
  # Without deep supervision: the same logits from the same parameters, no sides.
  plain = NNUNet2D(dataclasses.replace(options, deep_supervision=False))
  out = jax.jit(plain.apply)({'params': params}, x)
  assert out['side_logits'] == ()
  np.testing.assert_allclose(out['logits'], logits, atol=1e-4, rtol=1e-4)


def test_an_input_the_plan_does_not_divide_is_padded_to_its_patch_and_cropped():
  """18 x 16: (18, 16) -> (9, 8) -> (5, 4), two halvings, so the patch is 20 x 16; the
  outputs are those of the zero-padded 20 x 16 input cut to 18 x 16 (logits) and
  ceil(18 / 2) x 8 (the side)."""
  model = NNUNet2D(NNUNet2DOptions(base_channels=2))
  x = np.random.default_rng(4).standard_normal((2, 18, 16, 1)).astype(np.float32)
  params = _randomized(model, x, seed=5)
  apply = jax.jit(model.apply)
  out = apply({'params': params}, x)
  padded = apply({'params': params}, np.pad(x, ((0, 0), (0, 2), (0, 0), (0, 0))))
  assert out['logits'].shape == (2, 18, 16, 1)
  np.testing.assert_array_equal(out['logits'], padded['logits'][:, :18])
  assert [s.shape for s in out['side_logits']] == [(2, 9, 8, 1)]
  np.testing.assert_array_equal(out['side_logits'][0], padded['side_logits'][0][:, :9])


def test_deep_supervision_sides_run_from_high_to_low_resolution():
  """At 64 x 64 (stages of 64, 32, 16, 8, 4): the main head at 64, sides at 32, 16, 8."""
  config = load_config(ROOT / 'configs/default.py', 'variant=nnunet2d')
  config.model.base_channels = 2
  model = build_model(config.model)
  out = jax.eval_shape(
    lambda v: model.apply(v, jnp.zeros((2, 64, 64, 1)), True), abstract_variables(model, 64)
  )
  assert out['logits'].shape == (2, 64, 64, 1)
  assert [s.shape[1:3] for s in out['side_logits']] == [(32, 32), (16, 16), (8, 8)]
