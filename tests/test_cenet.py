"""CE-Net: its parameter count against the reference code's, DAC, RMP and the transposed
convs against NumPy, the ResNet depth option (the contract every network keeps:
tests/test_networks.py). Training on the phantom demo (slow) is in
tests/test_compared_networks.py."""

import jax
import numpy as np
import pytest

from ecam_jax.configuration import check, load_config
from ecam_jax.errors import ConfigError
from ecam_jax.models.baselines.cenet import DAC, RMP, transposed_conv
from ecam_jax.models.build import abstract_variables, build_model

import numpy_ref as ref


def _config(base=4, size=32, config_file='configs/default.py', **model):
  config = load_config(config_file, 'variant=cenet')
  config.model.base_channels = base
  config.model.update(model)
  config.data.image_size = size
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter count ----------------------------------------------------------------------


def test_reference_width_has_the_reference_count_without_conv_bias_before_bn():
  """Guzaiwang/CE-Net's CE_Net_ with a 1-channel stem and 1 class has 28,996,821
  parameters. The project drops the bias of every conv followed by BatchNorm: the 12 convs
  of the 4 decoder blocks (129+129+256 + 64+64+128 + 32+32+64 + 16+16+64 = 994), leaving
  28,995,827. (torchvision's ResNet convs have none; DAC's, RMP's and the head's convs have
  no BatchNorm and keep theirs.)"""
  config = load_config('configs/default.py', 'variant=cenet')
  assert (config.model.base_channels, config.model.resnet_depth) == (64, 34)
  params = abstract_variables(build_model(config.model), 512)['params']
  assert _count(params) == 28_995_827
  assert _count(params['encoder']) == 21_278_400  # torchvision resnet34 - fc - 2 stem channels
  assert _count(params['dac']) == 7_342_080  # baselines: 3 x (9 C^2 + C) + C^2 + C, C = 512
  assert _count(params['rmp']) == 513


def _decoder_and_head(base: int, classes: int = 1) -> int:
  """Dec(i -> o), m = i // 4: 1x1 i->m, 3x3 m->m (transposed), 1x1 m->o, no bias, 3 BNs.
  Head with h = base / 2: 4x4 base->h, 3x3 h->h, 3x3 h->classes, each with bias."""

  def dec(i, o):
    m = i // 4
    return i * m + 9 * m * m + m * o + 2 * (2 * m + o)

  e = [base, 2 * base, 4 * base, 8 * base]
  h = base // 2
  decoders = dec(e[3] + 4, e[2]) + dec(e[2], e[1]) + dec(e[1], e[0]) + dec(e[0], e[0])
  return decoders + 16 * base * h + h + 9 * h * h + h + 9 * h * classes + classes


@pytest.mark.parametrize('base', [8, 16, 64])
def test_decoder_and_head_follow_the_closed_form(base):
  params = abstract_variables(build_model(_config(base).model), 32)['params']
  rest = {k: v for k, v in params.items() if k not in ('encoder', 'dac', 'rmp')}
  assert set(rest) == {f'decoder{i}' for i in range(1, 5)} | {
    'finaldeconv1',
    'finalconv2',
    'finalconv3',
  }
  assert _count(rest) == _decoder_and_head(base)
  c = 8 * base
  assert _count(params['dac']) == 3 * (9 * c * c + c) + c * c + c


# --- DAC, RMP and the transposed convs against NumPy --------------------------------------


def _np_dac(x, p):
  """out = x + r(D1 x) + r(P D3 x) + r(P D3 D1 x) + r(P D5 D3 D1 x) (the paper's Fig. 3 and
  the reference's DACblock; one set of weights per conv)."""

  def d(y, rate):
    q = p[f'dilate{rate}']
    return ref.conv2d(y, q['kernel'], rate, q['bias'])

  def proj(y):
    return ref.conv2d(y, p['conv1x1']['kernel'], bias=p['conv1x1']['bias'])

  x = np.asarray(x, np.float64)
  branches = [d(x, 1), proj(d(x, 3)), proj(d(d(x, 1), 3)), proj(d(d(d(x, 1), 3), 5))]
  return x + sum(ref.relu(b) for b in branches)


@pytest.mark.parametrize('shape', [(2, 8, 8, 6), (2, 2, 3, 5)])
def test_dac_equals_numpy(shape):
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  dac = DAC()
  params = ref.randomize(jax.device_get(dac.init(jax.random.key(0), x))['params'], seed=2)
  assert set(params) == {'dilate1', 'dilate3', 'dilate5', 'conv1x1'}  # shared: 4 convs
  out = dac.apply({'params': params}, x)
  expected = _np_dac(x, params)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _np_rmp(x, p, pools=(2, 3, 5, 6)):
  """Max-pools of window = stride = k (clipped to the map), one shared 1x1 conv to a
  channel, bilinear back to h x w; concat [maps, x]."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  maps = []
  for k in pools:
    kh, kw = min(k, h), min(k, w)
    oh, ow = h // kh, w // kw
    pooled = x[:, : oh * kh, : ow * kw].reshape(b, oh, kh, ow, kw, c).max(axis=(2, 4))
    y = pooled @ p['conv']['kernel'][0, 0] + p['conv']['bias']  # [B, oh, ow, 1]
    y = ref.resize_bilinear(y, (h, w), align_corners=False)
    maps.append(y)
  return np.concatenate([*maps, x], -1)


@pytest.mark.parametrize('shape', [(2, 16, 16, 4), (2, 16, 12, 3), (1, 2, 3, 4), (1, 7, 11, 2)])
def test_rmp_equals_numpy(shape):
  """16 x 16 is the map at 512 x 512 (pools 8, 5, 3, 2 wide); 2 x 3 is a 64 x 96 input's,
  where every window is clipped to the map."""
  x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
  rmp = RMP()
  params = ref.randomize(jax.device_get(rmp.init(jax.random.key(0), x))['params'], seed=4)
  out = rmp.apply({'params': params}, x)
  expected = _np_rmp(x, params)
  assert out.shape == (*shape[:3], shape[3] + 4)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _np_conv_transpose(x, w, bias, stride, padding, output_padding):
  """PyTorch's ConvTranspose2d: y[s i + t - p] += x[i] w[t] in both axes, cropped to
  (n - 1) s - 2 p + k + output_padding. w: [k, k, I, O]."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  b, h, wd, _ = x.shape
  k = w.shape[0]
  full = np.zeros(
    (b, (h - 1) * stride + k + output_padding, (wd - 1) * stride + k + output_padding, w.shape[-1])
  )
  for i in range(h):
    for j in range(wd):
      for t in range(k):
        for u in range(k):
          full[:, stride * i + t, stride * j + u] += x[:, i, j] @ w[t, u]
  oh = (h - 1) * stride - 2 * padding + k + output_padding
  ow = (wd - 1) * stride - 2 * padding + k + output_padding
  return full[:, padding : padding + oh, padding : padding + ow] + bias


@pytest.mark.parametrize(('kernel', 'padding', 'output_padding'), [(3, 1, 1), (4, 1, 0)])
def test_transposed_conv_is_pytorchs_with_a_flipped_kernel(kernel, padding, output_padding):
  """The decoder blocks' ConvTranspose2d(3, 2, 1, 1) and the head's (4, 2, 1): double size."""
  x = np.random.default_rng(5).standard_normal((2, 3, 5, 3)).astype(np.float32)
  layer = transposed_conv(4, kernel, padding, output_padding)
  params = ref.randomize(jax.device_get(layer.init(jax.random.key(0), x))['params'], seed=6)
  out = layer.apply({'params': params}, x)
  flipped = params['kernel'][::-1, ::-1]
  expected = _np_conv_transpose(x, flipped, params['bias'], 2, padding, output_padding)
  assert out.shape == expected.shape == (2, 6, 10, 4)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# --- contract -----------------------------------------------------------------------------


@pytest.mark.parametrize(('depth', 'widths'), [(18, (4, 8, 16, 32)), (50, (16, 32, 64, 128))])
def test_resnet_depth_sets_the_encoder_and_the_decoder_follows_its_widths(depth, widths):
  model = build_model(_config(base=4, resnet_depth=depth).model)
  params = abstract_variables(model, 32)['params']
  assert ('conv3' in params['encoder']['layer1_0']) == (depth >= 50)  # Bottleneck
  assert params['dac']['conv1x1']['kernel'].shape == (1, 1, widths[3], widths[3])
  # Dec(C4 + 4 -> C3) ... Dec(C1 -> C1): the first conv of each reads its input width.
  ins = {4: widths[3] + 4, 3: widths[2], 2: widths[1], 1: widths[0]}
  outs = {4: widths[2], 3: widths[1], 2: widths[0], 1: widths[0]}
  for i in range(1, 5):
    assert params[f'decoder{i}']['conv1']['kernel'].shape == (1, 1, ins[i], ins[i] // 4)
    assert params[f'decoder{i}']['conv3']['kernel'].shape[-1] == outs[i]
  assert params['finaldeconv1']['kernel'].shape == (4, 4, widths[0], 2)


@pytest.mark.parametrize('value', [152, 0, 35])
def test_resnet_depth_is_checked(value):
  config = load_config('configs/default.py', 'variant=cenet')
  check(config)
  config.model.resnet_depth = value
  with pytest.raises(ConfigError, match=r'config\.model\.resnet_depth\b'):
    check(config)
