"""Attention U-Net (`attention_unet`): the reference's parameter count, the attention gate
and a decoder level against NumPy (the contract every network keeps:
tests/test_networks.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ecam_jax.configuration import load_config
from ecam_jax.models.baselines.attention_unet import AttentionDecoderLevel, AttentionGate
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.models.layers import make_norm

import numpy_ref as ref

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = 'attention_unet'
MOMENTUM = 0.9  # the default config.model.bn_momentum (Flax's convention: new = m old + ...)


def _config(base=None, size=32, config='configs/default.py'):
  c = load_config(ROOT / config, f'variant={NAME}')
  if base is not None:
    c.model.base_channels = base
  c.data.image_size = size
  return c


def _count(base: int, biases_before_bn: bool = False) -> int:
  """Closed-form parameter count of LeeJunHyun's AttU_Net(img_ch=1, output_ch=1) with
  widths base * (1, 2, 4, 8, 16). `biases_before_bn`: count the reference's conv biases in
  front of BatchNorm (PyTorch counts), else not (this project's convention)."""
  bias = int(biases_before_bn)
  cbr = lambda i, o, k: k * k * i * o + bias * o + 2 * o  # conv (+ bias) + BN scale, shift
  c = [base * m for m in (1, 2, 4, 8, 16)]
  total = cbr(1, c[0], 3) + cbr(c[0], c[0], 3)  # Conv1
  for i, o in zip(c[:-1], c[1:], strict=True):  # Conv2..Conv5
    total += cbr(i, o, 3) + cbr(o, o, 3)
  for hi, lo in zip(c[:0:-1], c[-2::-1], strict=True):  # Up5..Up2, Att5..Att2, Up_conv5..2
    f_int = lo // 2
    total += cbr(hi, lo, 3)  # up_conv: nearest x2, CBR(3)
    total += 2 * cbr(lo, f_int, 1) + cbr(f_int, 1, 1)  # W_g, W_x, psi
    total += cbr(2 * lo, lo, 3) + cbr(lo, lo, 3)  # conv_block
  return total + c[0] * 1 + 1  # head: 1x1 conv with bias to 1 logit


def _params(base: int, size: int) -> int:
  variables = abstract_variables(build_model(_config(base).model), size)
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_parameter_count_is_the_references_without_biases_before_batchnorm():
  # Convention: every conv followed by BatchNorm has no bias (docs/model.md), the gates'
  # W_g, W_x and psi included; the reference AttU_Net has 34,877,421 with those biases.
  assert _config().model.base_channels == 64
  assert _params(64, 512) == 34_869_609
  assert _count(64) == 34_869_609
  assert _count(64, biases_before_bn=True) == 34_877_421
  assert _params(4, 32) == _count(4)  # the formula holds at any width


def _gate_variables(rng, c, f_int):
  """Random parameters and non-trivial running statistics of one gate."""
  gate = AttentionGate(inter_features=f_int, norm=make_norm(None, MOMENTUM, ref.EPS, jnp.float32))
  x = jnp.zeros((1, 4, 4, c))
  abstract = jax.eval_shape(lambda: gate.init(jax.random.key(0), x, x, train=False))
  params = ref.randomize(abstract['params'], seed=1, scale=1.0)
  stats = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32) * 0.3, abstract)
  stats = stats['batch_stats']
  for bn in stats.values():
    bn['var'] = np.abs(bn['var']) + 0.2
  return gate, params, stats


def _np_gate(g, x, p, bn):
  """psi = sigmoid(BN(psi(ReLU(BN(W_g g) + BN(W_x x))))), out = x psi. `bn(y, name)` is the
  BatchNorm of layer `name` in the mode under test."""
  g1 = bn(ref.conv2d(g, p['wg']['kernel']), 'wg_bn')
  x1 = bn(ref.conv2d(x, p['wx']['kernel']), 'wx_bn')
  psi = ref.sigmoid(bn(ref.conv2d(ref.relu(g1 + x1), p['psi']['kernel']), 'psi_bn'))
  return np.asarray(x, np.float64) * psi, psi


def test_attention_gate_against_numpy_eval_mode_running_statistics():
  rng = np.random.default_rng(0)
  c, f_int = 6, 3
  gate, params, stats = _gate_variables(rng, c, f_int)
  g = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
  x = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
  out = gate.apply({'params': params, 'batch_stats': stats}, g, x, train=False)

  def bn(y, name):
    return ref.batchnorm_eval(
      y, params[name]['scale'], params[name]['bias'], stats[name]['mean'], stats[name]['var']
    )

  expected, psi = _np_gate(g, x, params, bn)
  assert psi.shape == (2, 5, 7, 1) and psi.std() > 0.05  # a gate that varies per pixel
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_gate_against_numpy_train_mode_batch_statistics():
  rng = np.random.default_rng(1)
  c, f_int = 4, 2
  gate, params, stats = _gate_variables(rng, c, f_int)
  g = rng.standard_normal((3, 4, 6, c)).astype(np.float32) + 0.5
  x = rng.standard_normal((3, 4, 6, c)).astype(np.float32)
  out, updated = gate.apply(
    {'params': params, 'batch_stats': stats}, g, x, train=True, mutable=['batch_stats']
  )
  batch = {}

  def bn(y, name):
    batch[name] = (y.mean((0, 1, 2)), y.var((0, 1, 2)))
    return ref.batchnorm_train(y, params[name]['scale'], params[name]['bias'])

  expected, _ = _np_gate(g, x, params, bn)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  for name, (mean, var) in batch.items():  # running statistics move toward the batch's
    new = updated['batch_stats'][name]
    np.testing.assert_allclose(new['mean'], MOMENTUM * stats[name]['mean'] + 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(new['var'], MOMENTUM * stats[name]['var'] + 0.1 * var, atol=1e-5)


def test_decoder_level_against_numpy():
  """Nearest x2 (each pixel repeated 2x2), CBR(3), the gate on the skip, concat [gated
  skip, up], two CBR(3); train mode."""
  rng = np.random.default_rng(2)
  c_in, c = 6, 4
  level = AttentionDecoderLevel(features=c, norm=make_norm(None, MOMENTUM, ref.EPS, jnp.float32))
  x = rng.standard_normal((2, 3, 4, c_in)).astype(np.float32)
  skip = rng.standard_normal((2, 6, 8, c)).astype(np.float32)
  abstract = jax.eval_shape(lambda: level.init(jax.random.key(0), x, skip, train=False))
  params = ref.randomize(abstract['params'], seed=3)
  variables = {'params': params, 'batch_stats': ref.host_variables(abstract)['batch_stats']}
  out, _ = level.apply(variables, x, skip, train=True, mutable=['batch_stats'])

  up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
  d = ref.conv_unit(up, params['up'])

  def bn(y, name):
    return ref.batchnorm_train(y, params['gate'][name]['scale'], params['gate'][name]['bias'])

  gated, _ = _np_gate(d, skip, params['gate'], bn)
  y = np.concatenate([gated, d], axis=-1)
  expected = ref.conv_unit(ref.conv_unit(y, params['conv0']), params['conv1'])
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)
