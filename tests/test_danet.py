"""DA-Net: its parameter count against the reference code's, PAM (with each attention
implementation) and CAM against NumPy, the heads, the output stride and the sizes it
takes, the auxiliary heads (the contract every network keeps: tests/test_networks.py).
Training on the phantom demo (slow) is in tests/test_compared_networks.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.baselines.danet import ChannelAttention, PositionAttention
from ecam_jax.models.build import abstract_variables, build_model

import numpy_ref as ref


def _config(base=4, size=32, config_file='configs/default.py', **model):
  """The danet variant with a small ResNet-18 backbone (dilated BasicBlocks: the same
  strides and dilations as ResNet-50's, a quarter of the blocks to compile)."""
  config = load_config(config_file, 'variant=danet')
  config.model.update({'base_channels': base, 'resnet_depth': 18, **model})
  config.data.image_size = size
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter count ----------------------------------------------------------------------


def _head(c: int, classes: int = 1) -> int:
  """DANetHead on C channels, i = C / 4: conv5a, conv5c (3x3 C -> i) and conv51, conv52
  (3x3 i -> i), no bias, each with a BatchNorm (2i); PAM's 1x1 query and key (i -> i/8)
  and value (i -> i) with bias and its gamma; CAM's gamma; conv6-8 (1x1 i -> K, bias)."""
  i, k = c // 4, c // 32
  convs = 2 * (9 * c * i + 2 * i) + 2 * (9 * i * i + 2 * i)
  pam = 2 * (i * k + k) + i * i + i + 1
  return convs + pam + 1 + 3 * (i * classes + classes)


@pytest.mark.parametrize(
  ('depth', 'total', 'backbone'), [(50, 47_428_677, 23_501_760), (101, 66_420_805, 42_493_888)]
)
def test_reference_width_has_the_reference_count(depth, total, backbone):
  """junfu1115/DANet's DANet with a 1-channel stem and 1 class: 47,428,677 parameters on
  ResNet-50 (torchvision's 23,508,032 without fc, less 2 x 64 x 49 stem weights) and
  66,420,805 on ResNet-101; the head is 23,926,917 either way. The reference already has
  no bias before its BatchNorms."""
  config = load_config('configs/default.py', 'variant=danet')
  assert (config.model.base_channels, config.model.output_stride) == (64, 8)
  config.model.resnet_depth = depth
  params = abstract_variables(build_model(config.model), 512)['params']
  assert _count(params) == total
  assert _count(params['backbone']) == backbone
  assert _count(params) - backbone == _head(2048) == 23_926_917
  assert params['pam']['query']['kernel'].shape == (1, 1, 512, 64)
  assert params['pam']['value']['kernel'].shape == (1, 1, 512, 512)


@pytest.mark.parametrize(('base', 'depth', 'c4'), [(8, 50, 256), (16, 18, 128)])
def test_head_follows_the_closed_form(base, depth, c4):
  params = abstract_variables(build_model(_config(base, resnet_depth=depth).model), 32)['params']
  assert params['conv5a']['Conv_0']['kernel'].shape[2] == c4
  assert _count(params) - _count(params['backbone']) == _head(c4)


# --- PAM and CAM against NumPy ------------------------------------------------------------


def _np_pam(x, p):
  """out_i = gamma sum_j softmax_j(q_i . k_j) v_j + x_i, q, k, v 1x1 convs with bias."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  flat = x.reshape(b, h * w, c)
  q, k, v = (flat @ p[n]['kernel'][0, 0] + p[n]['bias'] for n in ('query', 'key', 'value'))
  attention = ref.softmax(np.einsum('bic,bjc->bij', q, k), axis=-1)  # [B, N, N]
  return (p['gamma'] * attention @ v + flat).reshape(x.shape)


def _np_cam(x, gamma):
  """E = X X^T ([C, C]), A = softmax(max_row(E) - E), out = gamma A X + X."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  rows = x.reshape(b, h * w, c).transpose(0, 2, 1)  # X: [B, C, N]
  energy = rows @ rows.transpose(0, 2, 1)
  attention = ref.softmax(energy.max(-1, keepdims=True) - energy, axis=-1)
  return (gamma * attention @ rows + rows).transpose(0, 2, 1).reshape(x.shape)


@pytest.mark.parametrize('impl', ['naive', 'chunked', 'fused'])
def test_position_attention_equals_numpy(impl):
  """4 x 5 positions (chunks of 7: a ragged last block), 16 channels, 2-d keys; the random
  parameters include a nonzero gamma."""
  x = np.random.default_rng(1).standard_normal((2, 4, 5, 16)).astype(np.float32)
  pam = PositionAttention(impl=impl, chunk=7)
  variables = jax.device_get(pam.init(jax.random.key(0), x))
  assert variables['params']['gamma'] == 0  # starts as the identity
  np.testing.assert_array_equal(pam.apply(variables, x), x)
  params = ref.randomize(variables['params'], seed=2)
  assert params['query']['kernel'].shape == (1, 1, 16, 2) and params['gamma'] != 0
  expected = _np_pam(x, params)
  np.testing.assert_allclose(pam.apply({'params': params}, x), expected, rtol=1e-4, atol=1e-4)


def test_channel_attention_equals_numpy():
  """CAM's softmax is of max_row(E) - E, not of E: the two differ (checked at the end)."""
  x = np.random.default_rng(3).standard_normal((2, 3, 4, 6)).astype(np.float32) * 0.3
  cam = ChannelAttention()
  variables = jax.device_get(cam.init(jax.random.key(0), x))
  assert set(variables['params']) == {'gamma'} and variables['params']['gamma'] == 0
  params = ref.randomize(variables['params'], seed=4)
  out = cam.apply({'params': params}, x)
  expected = _np_cam(x, params['gamma'])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  rows = np.asarray(x, np.float64).reshape(2, 12, 6)
  energy = rows.transpose(0, 2, 1) @ rows
  plain = params['gamma'] * ref.softmax(energy, -1) @ rows.transpose(0, 2, 1)  # not CAM's
  assert np.abs(out - x - plain.transpose(0, 2, 1).reshape(x.shape)).max() > 1e-2


# --- the network --------------------------------------------------------------------------


X = np.random.default_rng(7).standard_normal((2, 32, 48, 1)).astype(np.float32)


def _train_step(remat: bool):
  """Parameters, outputs, every module's output and the gradient of one training pass on X
  (32 x 48: c4 is 4 x 6) at base 4 (c4 = 32, inter 8), with random variables, naive
  attention (remat then recomputes PAM's map) and dropout off (deterministic)."""
  model = build_model(_config(remat=remat, dropout=0.0, attention_impl='naive').model)
  variables = ref.randomize(abstract_variables(model, 32), seed=8, scale=0.3)
  batch_stats = jax.tree.map(lambda v: np.abs(v) + 0.5, variables['batch_stats'])

  def loss(params):
    out, state = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      X,
      True,
      capture_intermediates=True,
      mutable=['batch_stats', 'intermediates'],
    )
    value = jnp.mean(out['logits'] ** 2) + jnp.mean(out['side_logits'][0] ** 2)
    return value, (out, state['intermediates'])

  (_, (out, inter)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
  return jax.device_get((variables['params'], out, inter, grads))


@pytest.fixture(scope='module')
def train_step():
  """The plain model's pass, compiled once."""
  return _train_step(remat=False)


def test_heads_are_1x1_convs_resized_with_aligned_corners(train_step):
  """logits = up(conv8(sa + sc)), sides = up(conv6(sa)), up(conv7(sc)), with sa and sc the
  outputs of conv51 and conv52 at stride 8 (4 x 6) and up PyTorch's bilinear resize with
  align_corners=True to 32 x 48."""
  params, out, inter, _ = train_step
  sa, sc = inter['conv51']['__call__'][0], inter['conv52']['__call__'][0]
  assert sa.shape == sc.shape == (2, 4, 6, 8)

  def head(y, name):
    y = np.asarray(y, np.float64) @ params[name]['kernel'][0, 0] + params[name]['bias']
    return ref.resize_bilinear(y, (32, 48), align_corners=True)

  assert out['logits'].dtype == np.float32 and len(out['side_logits']) == 2
  for got, expected in zip(
    (out['logits'], *out['side_logits']),
    (head(sa + sc, 'conv8'), head(sa, 'conv6'), head(sc, 'conv7')),
    strict=True,
  ):
    assert got.shape == (2, 32, 48, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(('stride', 'strides'), [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16))])
def test_output_stride_dilates_the_last_stages_instead_of_striding(stride, strides):
  model = build_model(_config(output_stride=stride).model)
  x = jax.ShapeDtypeStruct((1, 64, 32, 1), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['intermediates']),
    abstract_variables(model, 32),
    x,
  )
  features = state['intermediates']['backbone']['__call__'][0]  # (c1, c2, c3, c4)
  assert [f.shape[1:3] for f in features] == [(64 // r, 32 // r) for r in strides]
  assert state['intermediates']['conv5a']['__call__'][0].shape == (1, 64 // stride, 32 // stride, 8)


# --- contract -----------------------------------------------------------------------------


@pytest.mark.parametrize(('stride', 'shape'), [(8, (36, 64)), (16, (40, 48))])
def test_input_sizes_that_do_not_divide_the_output_stride_are_refused(stride, shape):
  model = build_model(_config(output_stride=stride).model)
  with pytest.raises(ValueError, match=rf'{shape[0]}x{shape[1]}.*multiples of {stride}\b'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape, 1))))


def test_no_side_outputs_without_deep_supervision():
  model = build_model(_config(deep_supervision=False).model)
  variables = abstract_variables(model, 32)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 1))), variables)
  assert out['logits'].shape == (2, 32, 32, 1) and out['side_logits'] == ()
  assert not {'conv6', 'conv7'} & set(variables['params'])  # 2 x (inter * K + K) fewer
