"""SegFormer: its parameter counts against the reference code's (B2, B0), the efficient
self-attention and Mix-FFN against NumPy, the drop-path schedule, remat of every encoder
block (the contract every network keeps: tests/test_networks.py). Training on the phantom
demo (slow) is in tests/test_compared_networks.py."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.baselines.segformer import EfficientSelfAttention, MixFFN
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.models.dropout import DropPath

import numpy_ref as ref


def _config(size='b0', **model):
  config = load_config('configs/default.py', 'variant=segformer')
  config.model.size = size
  config.model.update(model)
  config.data.image_size = 32
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter count ----------------------------------------------------------------------


@pytest.mark.parametrize(
  ('size', 'encoder', 'decoder'), [('b2', 24_190_016, 3_151_105), ('b0', 3_316_256, 395_009)]
)
def test_parameter_counts_are_the_reference_codes(size, encoder, decoder):
  """NVlabs/SegFormer's mit_b2 / mit_b0 with a 1-channel patch embedding, and SegFormerHead
  with 1 class (its fuse conv has no bias, as mmcv's ConvModule before a norm; mmseg's
  unused `conv_seg` not counted): B2 27,341,121, B0 3,711,265."""
  config = load_config('configs/default.py', 'variant=segformer')
  config.model.size = size
  params = abstract_variables(build_model(config.model), 512)['params']
  assert set(params) == {'encoder', 'decoder'}
  assert (_count(params['encoder']), _count(params['decoder'])) == (encoder, decoder)
  assert _count(params) == {'b2': 27_341_121, 'b0': 3_711_265}[size]


def test_variant_default_is_b2():
  assert load_config('configs/default.py', 'variant=segformer').model.size == 'b2'


# --- the blocks against NumPy -------------------------------------------------------------


def _np_layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_linear(x, p):
  return np.asarray(x, np.float64) @ p['kernel'] + p['bias']


def _np_efficient_attention(x, p, heads, r):
  """Tokens n = h * w. With r > 1 the keys and values come from the map cut into r x r
  patches, each sum_{i,j} x[r a + i, r b + j] W[i, j] + b (the sr conv), then LayerNorm
  (eps 1e-5); with r = 1 from the map itself. One Linear C -> 2C: its first C outputs are
  the keys, the rest the values. Head t uses channels t d .. (t + 1) d - 1 of q, k and v:
  softmax(q k^T / sqrt(d)) v, heads concatenated, then proj."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  d = c // heads
  q = _np_linear(x, p['q']).reshape(b, h * w, c)
  source = x
  if r > 1:
    source = np.zeros((b, h // r, w // r, c))
    for i in range(r):
      for j in range(r):
        source += x[:, i::r, j::r] @ p['sr']['kernel'][i, j]
    source = _np_layer_norm(source + p['sr']['bias'], p['norm'], 1e-5)
  kv = _np_linear(source.reshape(b, -1, c), p['kv'])
  keys, values = kv[..., :c], kv[..., c:]
  out = np.zeros((b, h * w, c))
  for t in range(heads):
    part = slice(t * d, (t + 1) * d)
    scores = q[..., part] @ keys[..., part].transpose(0, 2, 1) / math.sqrt(d)
    out[..., part] = ref.softmax(scores) @ values[..., part]
  return _np_linear(out, p['proj']).reshape(b, h, w, c)


@pytest.mark.parametrize(('heads', 'r'), [(2, 8), (1, 1)])
def test_efficient_self_attention_equals_numpy(heads, r):
  """Stage 1's reduction 8 on a 16 x 24 map (2 x 3 keys and values), and plain attention
  (stage 4, r = 1: no sr conv, no norm)."""
  x = np.random.default_rng(1).standard_normal((2, 16, 24, 16)).astype(np.float32)
  attn = EfficientSelfAttention(heads, r)
  params = ref.randomize(jax.device_get(attn.init(jax.random.key(0), x))['params'], seed=2)
  assert set(params) == ({'q', 'sr', 'norm', 'kv', 'proj'} if r > 1 else {'q', 'kv', 'proj'})
  out = attn.apply({'params': params}, x)
  expected = _np_efficient_attention(x, params, heads, r)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _np_mix_ffn(x, p):
  """fc1 -> depthwise 3x3 (each channel its own kernel, zero padding 1, bias) -> exact GELU
  x (1 + erf(x / sqrt 2)) / 2 -> fc2."""
  y = _np_linear(x, p['fc1'])
  b, h, w, c = y.shape
  padded = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.zeros_like(y)
  for i in range(3):
    for j in range(3):
      conv += padded[:, i : i + h, j : j + w] * p['dwconv']['kernel'][i, j, 0]
  conv += p['dwconv']['bias']
  erf = np.vectorize(math.erf)
  return _np_linear(conv * (1 + erf(conv / math.sqrt(2))) / 2, p['fc2'])


def test_mix_ffn_equals_numpy_with_exact_gelu():
  x = np.random.default_rng(3).standard_normal((2, 5, 7, 6)).astype(np.float32)
  mlp = MixFFN(24)
  params = ref.randomize(jax.device_get(mlp.init(jax.random.key(0), x))['params'], seed=4)
  params = jax.tree.map(lambda v: v * 3, params)  # pre-activations of several units: GELU's
  assert params['dwconv']['kernel'].shape == (3, 3, 1, 24)  # tanh form is off by ~1e-3 there
  out = mlp.apply({'params': params}, x)
  expected = _np_mix_ffn(x, params)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_drop_path_rises_linearly_over_all_blocks():
  """torch.linspace(0, drop_path, sum(depths)) over B2's 3 + 4 + 6 + 3 blocks, in order."""
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath):
      rates[context.module.path] = context.module.rate
    return next_fun(*args, **kwargs)

  model = build_model(_config('b2', drop_path=0.3).model)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  blocks = [f'block{i}_{j}' for i, depth in enumerate((3, 4, 6, 3), start=1) for j in range(depth)]
  assert [path[1] for path in rates] == blocks
  np.testing.assert_allclose(list(rates.values()), np.linspace(0, 0.3, 16), rtol=1e-12)


# --- contract -----------------------------------------------------------------------------


def test_remat_setting_checkpoints_each_encoder_block():
  """`model.remat` reaches the encoder: the gradient's program holds one rematerialized
  computation per Block (B0: 2 + 2 + 2 + 2), and none without it."""

  def checkpoints(remat):
    model = build_model(_config('b0', remat=remat).model)
    grad = jax.grad(lambda v: jnp.sum(model.apply(v, jnp.zeros((1, 32, 64, 1)))['logits']))
    jaxpr = jax.make_jaxpr(grad)(abstract_variables(model, 32))
    return [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns].count('remat2')

  assert (checkpoints(True), checkpoints(False)) == (8, 0)
