"""CC, SC, CoA, SE and CBAM against NumPy; the fused attention against the naive one."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.models.attention import (
  CBAM,
  ChannelCorrelation,
  CollaborativeAttention,
  ConvTranspose1D,
  SqueezeExcitation,
  dot_product_attention,
  spatial_attention,
)
from ecam_jax.models.layers import make_norm

import numpy_ref as ref

NORM = make_norm(None, 0.9, ref.EPS, jnp.float32)
# The paper's CoA (configs/default.py's values); tests change one field at a time.
COA = dict(norm=NORM, use_cc=True, use_sc=True, scale=1.0, impl='fused', chunk=256, hidden=1)


def _features(shape, seed=1, scale=0.3):
  return jax.random.normal(jax.random.key(seed), shape) * scale


def _apply_train(module, x, seed=0):
  variables = module.init(jax.random.key(0), x, train=False)
  params = ref.randomize(variables.get('params', {}), seed)
  out, _ = module.apply(
    {'params': params, 'batch_stats': variables.get('batch_stats', {})},
    x,
    train=True,
    mutable=['batch_stats'],
  )
  return out, params


@pytest.mark.parametrize('length,output_padding', [(8, 1), (5, 0)])
def test_conv_transpose_1d_is_pytorchs(length, output_padding):
  x = _features((2, length, 3), scale=1.0)
  module = ConvTranspose1D(
    features=2, kernel_size=7, stride=2, padding=3, output_padding=output_padding
  )
  params = ref.randomize(module.init(jax.random.key(0), x)['params'])
  expected = ref.conv_transpose1d(x, params['kernel'], params['bias'], 2, 3, output_padding)
  assert expected.shape[1] == (length - 1) * 2 - 6 + 7 + output_padding
  chex.assert_trees_all_close(module.apply({'params': params}, x), expected, atol=1e-5)


@pytest.mark.parametrize('channels', [16, 24, 15])
def test_channel_correlation_matches_numpy(channels):
  f = _features((3, 4, 5, channels))
  out, params = _apply_train(ChannelCorrelation(norm=NORM, hidden=1), f)
  chex.assert_trees_all_close(out, ref.channel_correlation(f, params), atol=1e-5, rtol=1e-4)


def test_channel_correlation_output_is_f_scaled_per_channel_into_0_1():
  f = jnp.abs(_features((2, 4, 4, 16))) + 0.1
  out, _ = _apply_train(ChannelCorrelation(norm=NORM, hidden=1), f)
  ratio = np.asarray(out / f)
  chex.assert_trees_all_close(ratio, np.broadcast_to(ratio[:, :1, :1, :], ratio.shape), atol=1e-6)
  assert ratio.min() > 0 and ratio.max() < 1


@pytest.mark.parametrize('scale', [1.0, 0.125])
def test_spatial_attention_naive_matches_numpy(scale):
  f, v = _features((2, 4, 6, 8), 1), _features((2, 4, 6, 8), 2)
  out = spatial_attention(f, v, scale, impl='naive', chunk=1)
  chex.assert_trees_all_close(out, ref.spatial_correlation(f, v, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('hw', [(2, 2), (4, 8), (8, 8), (16, 16)])
@pytest.mark.parametrize('impl', ['fused', 'chunked'])
def test_fused_and_chunked_attention_equal_naive(hw, impl):
  f = _features((2, *hw, 32), 3, scale=0.5)
  v = _features((2, *hw, 32), 4)
  for scale in (1.0, 1 / np.sqrt(32)):
    got = spatial_attention(f, v, scale, impl=impl, chunk=24)  # 24: a ragged last block
    naive = spatial_attention(f, v, scale, impl='naive', chunk=24)
    chex.assert_trees_all_close(got, naive, atol=1e-5, rtol=1e-5)


def test_chunked_attention_gradient_equals_naive():
  f, v = _features((2, 8, 8, 16), 5), _features((2, 8, 8, 16), 6)
  grad = lambda impl: jax.grad(
    lambda f, v: jnp.sum(spatial_attention(f, v, 0.25, impl=impl, chunk=20) ** 2),
    argnums=(0, 1),
  )(f, v)
  chex.assert_trees_all_close(grad('chunked'), grad('naive'), atol=1e-5, rtol=1e-4)


def test_collaborative_attention_matches_numpy():
  f = _features((2, 4, 4, 16))
  out, params = _apply_train(CollaborativeAttention(**{**COA, 'scale': 'rsqrt'}), f)
  expected = ref.collaborative_attention(f, params, scale=1 / 4)
  chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-4)


def test_collaborative_attention_halves():
  f = _features((2, 4, 4, 16))
  cc_only, params = _apply_train(CollaborativeAttention(**{**COA, 'use_sc': False}), f)
  expected = ref.channel_correlation(f, params['ChannelCorrelation_0']) + np.asarray(f)
  chex.assert_trees_all_close(cc_only, expected, atol=1e-5, rtol=1e-4)
  sc_only, params = _apply_train(CollaborativeAttention(**{**COA, 'use_cc': False}), f)
  assert params == {}
  chex.assert_trees_all_close(sc_only, ref.spatial_correlation(f, f) + np.asarray(f), atol=1e-5)


def test_squeeze_excitation_matches_numpy():
  f = _features((2, 3, 3, 32))
  out, params = _apply_train(SqueezeExcitation(reduction=16), f)
  assert params['Dense_0']['kernel'].shape == (32, 2) and 'bias' not in params['Dense_0']
  chex.assert_trees_all_close(out, ref.squeeze_excitation(f, params), atol=1e-5, rtol=1e-4)


def test_cbam_matches_numpy():
  f = _features((2, 9, 9, 32))
  out, params = _apply_train(CBAM(norm=NORM, reduction=16, kernel=7), f)
  assert params['Conv_0']['kernel'].shape == (7, 7, 2, 1) and 'bias' not in params['Conv_0']
  chex.assert_trees_all_close(out, ref.cbam(f, params), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('dims', [(8, 24), (24, 8)])
@pytest.mark.parametrize('impl', ['naive', 'chunked', 'fused'])
def test_attention_with_key_and_value_widths_that_differ_matches_numpy(impl, dims):
  """Separate queries, keys and values (DA-Net's PAM: 64-d keys, 512-d values); 'fused'
  zero-pads the narrower side, 'chunked' has a ragged last block (20 = 7 + 7 + 6)."""
  d, dv = dims
  q, k = _features((2, 20, d), 1, scale=0.5), _features((2, 20, d), 2, scale=0.5)
  v = _features((2, 20, dv), 3)
  out = dot_product_attention(q, k, v, 0.5, impl=impl, chunk=7)
  logits = np.einsum('bid,bjd->bij', *(np.asarray(t, np.float64) for t in (q, k))) * 0.5
  expected = ref.softmax(logits, axis=-1) @ np.asarray(v, np.float64)
  assert out.shape == (2, 20, dv)
  chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)
