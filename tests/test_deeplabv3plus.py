"""DeepLabV3+: its parameter count against the reference assembly's, ASPP and the decoder
against NumPy, the output stride and the ASPP rates, the sizes each stride takes (the
contract every network keeps: tests/test_networks.py). Training on the phantom demo (slow)
is in tests/test_compared_networks.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.baselines.deeplabv3plus import ASPP, Decoder
from ecam_jax.models.baselines.resnet import ResNet, stage_channels
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.models.layers import make_norm

import numpy_ref as ref


def _config(base=4, size=32, config_file='configs/default.py', **model):
  config = load_config(config_file, 'variant=deeplabv3plus')
  config.model.base_channels = base
  config.model.update(model)
  config.data.image_size = size
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter count ----------------------------------------------------------------------


@pytest.mark.parametrize(
  ('depth', 'total', 'backbone'), [(50, 40_340_769, 23_501_760), (101, 59_332_897, 42_493_888)]
)
def test_reference_width_has_the_reference_count(depth, total, backbone):
  """torchvision's ResNet-50 (-101) with a 1-channel stem and no fc, plus the TF
  refine_by_decoder head (ASPP 256 wide with image pooling, 48-channel low-level
  projection, two 3x3 convs of 256, one logit): 40,340,769 (59,332,897). Its convs before
  a BatchNorm already have no bias, so nothing is subtracted."""
  config = load_config('configs/default.py', 'variant=deeplabv3plus')
  config.model.resnet_depth = depth
  assert (config.model.base_channels, config.model.output_stride) == (64, 16)
  params = abstract_variables(build_model(config.model), 512)['params']
  assert _count(params) == total
  assert _count(params['backbone']) == backbone
  assert _count(params['aspp']) == 15_535_104
  assert _count(params['decoder']) == 1_303_905  # head: 16,839,009 together


def _head(base: int, depth: int, classes: int = 1) -> int:
  """ASPP of width A = 4 base on c4 (C4 channels): 1x1, three 3x3, image pooling's 1x1 and
  the 1x1 projection of 5A, each with a BatchNorm (2A). Decoder: 1x1 C1 -> L (L = 3 base /
  4) + BN, 3x3 (A + L) -> A + BN, 3x3 A -> A + BN, 1x1 A -> classes with bias."""
  c1, _, _, c4 = stage_channels(depth, base)
  a, low = 4 * base, max(1, 3 * base // 4)
  aspp = 2 * c4 * a + 3 * 9 * c4 * a + 5 * a * a + 6 * 2 * a
  decoder = c1 * low + 2 * low + 9 * (a + low) * a + 9 * a * a + 2 * 2 * a
  return aspp + decoder + a * classes + classes


@pytest.mark.parametrize(
  ('base', 'depth', 'stride'), [(64, 50, 16), (8, 50, 8), (16, 18, 16), (2, 34, 8)]
)
def test_head_follows_the_closed_form(base, depth, stride):
  config = _config(base, resnet_depth=depth, output_stride=stride)
  params = abstract_variables(build_model(config.model), 32)['params']
  assert set(params) == {'backbone', 'aspp', 'decoder'}
  assert _count(params['aspp']) + _count(params['decoder']) == _head(base, depth)


# --- ASPP and the decoder against NumPy ---------------------------------------------------


def _norm():
  return make_norm(None, 0.9, 1e-5, jnp.float32)


def _np_aspp(x, p, rates):
  """cat[CBR1x1(x), CBR3x3_r(x) for r in rates, broadcast(CBR1x1(mean_hw(x)))] -> CBR1x1
  (train-mode BatchNorm; image pooling's over the batch alone)."""
  x = np.asarray(x, np.float64)
  b, h, w, _ = x.shape
  branches = [ref.conv_unit(x, p['conv1x1'])]
  branches += [ref.conv_unit(x, p[f'atrous{i + 1}'], r) for i, r in enumerate(rates)]
  pooled = ref.conv_unit(x.mean(axis=(1, 2), keepdims=True), p['image_pool'])  # [B, 1, 1, A]
  branches.append(np.broadcast_to(pooled, (b, h, w, pooled.shape[-1])))
  return ref.conv_unit(np.concatenate(branches, -1), p['project'])


@pytest.mark.parametrize(
  ('shape', 'rates'), [((3, 6, 5, 3), (1, 2, 6)), ((2, 2, 3, 4), (6, 12, 18))]
)
def test_aspp_with_image_pooling_equals_numpy(shape, rates):
  """A 6 x 5 map with a rate past its side (that branch sees only its centre tap), and a
  2 x 3 map (a 32 x 48 input at stride 16) with the reference rates."""
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  aspp = ASPP(features=4, rates=rates, dropout=0.0, norm=_norm())
  variables = jax.device_get(aspp.init(jax.random.key(0), x, False))
  params = ref.randomize(variables['params'], seed=2)
  assert set(params) == {'conv1x1', 'atrous1', 'atrous2', 'atrous3', 'image_pool', 'project'}
  out, _ = aspp.apply(
    {'params': params, 'batch_stats': variables['batch_stats']}, x, True, mutable=['batch_stats']
  )
  expected = _np_aspp(x, params, rates)
  assert out.shape == (*shape[:3], 4)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _np_decoder(aspp, low, p):
  """CBR1x1(low); ASPP resized bilinearly (align_corners=True) to low's grid; cat [ASPP,
  low] -> CBR3x3 twice -> 1x1 conv with bias."""
  low = ref.conv_unit(low, p['low_project'])
  up = ref.resize_bilinear(aspp, low.shape[1:3], align_corners=True)
  y = np.concatenate([up, low], -1)
  y = ref.conv_unit(ref.conv_unit(y, p['refine1']), p['refine2'])
  return ref.conv2d(y, p['classifier']['kernel'], bias=p['classifier']['bias'])


def test_decoder_upsamples_aspp_and_concatenates_it_before_the_low_level_feature():
  rng = np.random.default_rng(3)
  aspp = rng.standard_normal((2, 3, 2, 5)).astype(np.float32)  # stride 16 of 48 x 32
  low = rng.standard_normal((2, 12, 8, 6)).astype(np.float32)  # stride 4
  decoder = Decoder(features=4, low_features=3, num_classes=2, norm=_norm())
  variables = jax.device_get(decoder.init(jax.random.key(0), aspp, low, False))
  params = ref.randomize(variables['params'], seed=4)
  assert params['refine1']['Conv_0']['kernel'].shape == (3, 3, 5 + 3, 4)
  out, _ = decoder.apply(
    {'params': params, 'batch_stats': variables['batch_stats']},
    aspp,
    low,
    True,
    mutable=['batch_stats'],
  )
  expected = _np_decoder(aspp, low, params)
  assert out.shape == expected.shape == (2, 12, 8, 2)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# --- output stride, rates, bfloat16 (no compile) ------------------------------------------


def _record(model, x_shape, record):
  """eval_shape of init and of a training apply, calling record(module, output) for every
  module call (nothing is compiled)."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      record(context.module, out)
    return out

  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  variables = abstract_variables(model, 32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(
      lambda v, x: model.apply(
        v, x, True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)}
      ),
      variables,
      x,
    )
  return variables


@pytest.mark.parametrize(('stride', 'rates'), [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_output_stride_sets_the_deepest_map_and_doubles_the_rates_at_8(stride, rates):
  seen = {}

  def record(module, out):
    if isinstance(module, ResNet):
      seen['features'] = [y.shape for y in out]
    elif module.name and module.name.startswith('atrous'):
      seen.setdefault('rates', []).append(module.dilation)

  _record(build_model(_config(resnet_depth=18, output_stride=stride).model), (2, 64, 96, 1), record)
  c1, _, _, c4 = seen['features']
  assert c1 == (2, 16, 24, 4)
  assert c4 == (2, 64 // stride, 96 // stride, 32)
  assert tuple(seen['rates']) == rates


@pytest.mark.parametrize(
  ('stride', 'refused', 'accepted'), [(16, (40, 64), (48, 32)), (8, (36, 64), (40, 24))]
)
def test_input_sides_must_be_multiples_of_the_output_stride(stride, refused, accepted):
  model = build_model(_config(resnet_depth=18, output_stride=stride).model)
  init = lambda h, w: jax.eval_shape(  # noqa: E731
    lambda: model.init(jax.random.key(0), jnp.zeros((1, h, w, 1)))
  )
  with pytest.raises(ValueError, match=f'{refused[0]}x{refused[1]}.*multiples of {stride}'):
    init(*refused)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, *accepted, 1))), init(*accepted))
  assert out['logits'].shape == (1, *accepted, 1)
