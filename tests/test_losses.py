"""The loss (eq. 11-13, 17) and its multi-class form against NumPy, alone and summed over a
sharded batch."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ecam_jax import losses
from ecam_jax.parallel import AXIS, data_mesh


def _np_sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _np_dice(logits, labels, smooth=1.0):
  p = _np_sigmoid(np.asarray(logits, np.float64))
  y = np.asarray(labels, np.float64)
  return 1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)


def _np_bce(logits, labels):
  p = _np_sigmoid(np.asarray(logits, np.float64))
  y = np.asarray(labels, np.float64)
  return float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)))


def _config(**kwargs):
  config = ml_collections.ConfigDict(
    dict(
      w_dice=1.0,
      w_bce=1.0,
      w_side=1.0,
      alpha=None,
      dice_smooth=1.0,
      class_weights=None,
      deep_supervision='paper',
    )
  )
  config.update(kwargs)
  return config


LOGITS = jax.random.normal(jax.random.key(0), (8, 6, 6, 1)) * 3
LABELS = (jax.random.uniform(jax.random.key(1), (8, 6, 6, 1)) > 0.7).astype(jnp.float32)
SIDE = jax.random.normal(jax.random.key(2), (8, 6, 6, 1))


def test_dice_and_bce_match_numpy():
  chex.assert_trees_all_close(losses.dice_loss(LOGITS, LABELS), _np_dice(LOGITS, LABELS), rtol=1e-5)
  chex.assert_trees_all_close(losses.bce_loss(LOGITS, LABELS), _np_bce(LOGITS, LABELS), rtol=1e-5)


def test_total_with_side_outputs_and_weights():
  outputs = {'logits': LOGITS, 'side_logits': (SIDE, LOGITS)}
  total, parts = losses.total_loss(outputs, LABELS, _config(w_dice=0.7, w_bce=0.2, w_side=0.5))
  side = (_np_bce(SIDE, LABELS) + _np_bce(LOGITS, LABELS)) / 2
  expected = 0.7 * _np_dice(LOGITS, LABELS) + 0.2 * _np_bce(LOGITS, LABELS) + 0.5 * side
  chex.assert_trees_all_close(total, expected, rtol=1e-5)
  chex.assert_trees_all_close(parts['side_bce'], side, rtol=1e-5)


def test_alpha_sets_the_dice_bce_weights():
  outputs = {'logits': LOGITS, 'side_logits': ()}
  total, parts = losses.total_loss(outputs, LABELS, _config(alpha=0.3))
  expected = 0.3 * _np_dice(LOGITS, LABELS) + 0.7 * _np_bce(LOGITS, LABELS)
  chex.assert_trees_all_close(total, expected, rtol=1e-5)
  assert 'side_bce' not in parts


@pytest.mark.parametrize('devices', [2, 8])
def test_sharded_loss_and_gradient_equal_global(devices):
  mesh = data_mesh(jax.devices()[:devices])
  config = _config()

  def global_loss(logits):
    return losses.total_loss({'logits': logits, 'side_logits': ()}, LABELS, config)[0]

  def per_device(logits, labels):
    return losses.total_loss({'logits': logits, 'side_logits': ()}, labels, config, AXIS)[0]

  sharded = jax.jit(
    jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P())
  )
  chex.assert_trees_all_close(sharded(LOGITS, LABELS), global_loss(LOGITS), rtol=1e-6)
  grad_sharded = jax.grad(lambda x: sharded(x, LABELS))(LOGITS)
  chex.assert_trees_all_close(grad_sharded, jax.grad(global_loss)(LOGITS), rtol=1e-5, atol=1e-9)


# Several classes: K + 1 = 3 logits, labels are class indices.
MC_LOGITS = jax.random.normal(jax.random.key(3), (8, 6, 6, 3)) * 2
MC_LABELS = jax.random.randint(jax.random.key(4), (8, 6, 6, 1), 0, 3).astype(jnp.float32)
MC_SIDE = jax.random.normal(jax.random.key(5), (8, 6, 6, 3))


def _np_softmax(logits):
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _np_multiclass(logits, labels, weights=None, rows=None, smooth=1.0):
  """(mean foreground soft Dice, weighted CE) written out class by class and pixel by pixel."""
  p = _np_softmax(logits)
  y = np.asarray(labels, np.int64)[..., 0]
  keep = np.ones(len(y), bool) if rows is None else np.asarray(rows)
  weights = np.ones(p.shape[-1]) if weights is None else np.asarray(weights, np.float64)
  dices = []
  for k in range(1, p.shape[-1]):
    pk, yk = p[keep][..., k], (y[keep] == k).astype(np.float64)
    dices.append(1 - (2 * (pk * yk).sum() + smooth) / (pk.sum() + yk.sum() + smooth))
  dice = np.sum(np.array(dices) * weights[1:]) / weights[1:].sum()
  num = den = 0.0
  for b in np.flatnonzero(keep):
    for i, j in np.ndindex(*y.shape[1:]):
      w = weights[y[b, i, j]]
      num += -w * np.log(p[b, i, j, y[b, i, j]])
      den += w
  return dice, num / den


@pytest.mark.parametrize('weights', [None, (0.5, 1.0, 3.0)])
def test_multiclass_dice_and_ce_match_numpy(weights):
  outputs = {'logits': MC_LOGITS, 'side_logits': (MC_SIDE,)}
  config = _config(w_dice=0.7, w_bce=0.4, w_side=0.5, class_weights=weights)
  total, parts = losses.total_loss(outputs, MC_LABELS, config)
  dice, ce = _np_multiclass(MC_LOGITS, MC_LABELS, weights)
  _, side_ce = _np_multiclass(MC_SIDE, MC_LABELS, weights)
  chex.assert_trees_all_close(parts['dice'], dice, rtol=1e-5)
  chex.assert_trees_all_close(parts['ce'], ce, rtol=1e-5)
  chex.assert_trees_all_close(parts['side_ce'], side_ce, rtol=1e-5)
  chex.assert_trees_all_close(total, 0.7 * dice + 0.4 * ce + 0.5 * side_ce, rtol=1e-5)
  assert 'bce' not in parts


def test_binary_class_weights_weigh_bce_by_label():
  outputs = {'logits': LOGITS, 'side_logits': ()}
  _, parts = losses.total_loss(outputs, LABELS, _config(class_weights=(0.25, 2.0)))
  p, y = _np_sigmoid(np.asarray(LOGITS, np.float64)), np.asarray(LABELS, np.float64)
  w = np.where(y > 0, 2.0, 0.25)
  expected = np.sum(w * (-y * np.log(p) - (1 - y) * np.log(1 - p))) / w.sum()
  chex.assert_trees_all_close(parts['bce'], expected, rtol=1e-5)


@pytest.mark.parametrize('devices', [2, 8])
def test_sharded_multiclass_loss_with_padding_rows_equals_global(devices):
  """Padding rows (False) count nowhere, over any device count; gradient as well."""
  mesh = data_mesh(jax.devices()[:devices])
  config = _config(class_weights=(0.5, 1.0, 3.0))
  rows = jnp.arange(8) < 6
  outputs = lambda x: {'logits': x, 'side_logits': ()}
  dice, ce = _np_multiclass(MC_LOGITS, MC_LABELS, config.class_weights, rows)

  def per_device(logits, labels, rows):
    return losses.total_loss(outputs(logits), labels, config, AXIS, rows)[0]

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS),) * 3, out_specs=P()))
  chex.assert_trees_all_close(sharded(MC_LOGITS, MC_LABELS, rows), dice + ce, rtol=1e-5)
  global_loss = lambda x: losses.total_loss(outputs(x[:6]), MC_LABELS[:6], config)[0]
  grad_sharded = jax.grad(lambda x: sharded(x, MC_LABELS, rows))(MC_LOGITS)
  chex.assert_trees_all_close(grad_sharded, jax.grad(global_loss)(MC_LOGITS), rtol=1e-5, atol=1e-9)


# Side outputs below full resolution (nnU-Net's deep supervision).


def _np_nearest_exact(labels, h, w):
  """PyTorch's interpolate(mode='nearest-exact') written out pixel by pixel: output (i, j)
  reads input (floor((i + 0.5) H / h), floor((j + 0.5) W / w)), clipped to the image."""
  labels = np.asarray(labels)
  b, height, width, c = labels.shape
  out = np.zeros((b, h, w, c), labels.dtype)
  for i in range(h):
    for j in range(w):
      y = min(int(np.floor((i + 0.5) * height / h)), height - 1)
      x = min(int(np.floor((j + 0.5) * width / w)), width - 1)
      out[:, i, j] = labels[:, y, x]
  return out


@pytest.mark.parametrize('size', [(3, 3), (6, 3), (2, 6), (4, 5), (5, 4), (6, 6)])
def test_labels_at_a_sides_size_are_nnunets_nearest_exact_targets(size):
  """Halving takes the odd rows and columns (1, 3, 5: nnU-Net's targets for a stride-2
  output), a factor 3 the middle ones; sizes that do not divide follow the same formula."""
  labels = np.arange(8 * 6 * 6).reshape(8, 6, 6, 1).astype(np.float32)
  got = np.asarray(losses.labels_at(jnp.asarray(labels), size))
  np.testing.assert_array_equal(got, _np_nearest_exact(labels, *size))
  if size == (3, 3):
    np.testing.assert_array_equal(got, labels[:, 1::2, 1::2])
  if size == (2, 6):
    np.testing.assert_array_equal(got, labels[:, 1::3])


def test_a_side_output_below_full_resolution_is_scored_on_nearest_labels():
  """BCE of a [B, 3, 3] and a [B, 6, 3] side output against the labels at their size, and
  the padding rows still left out of every term."""
  half = jax.random.normal(jax.random.key(6), (8, 3, 3, 1))
  tall = jax.random.normal(jax.random.key(7), (8, 6, 3, 1))
  rows = jnp.arange(8) < 5
  outputs = {'logits': LOGITS, 'side_logits': (half, tall)}
  config = _config()
  _, parts = jax.jit(lambda o, y, r: losses.total_loss(o, y, config, rows=r))(outputs, LABELS, rows)
  labels = np.asarray(LABELS)[:5]
  side = (
    _np_bce(np.asarray(half)[:5], labels[:, 1::2, 1::2])
    + _np_bce(np.asarray(tall)[:5], labels[:, :, 1::2])
  ) / 2
  chex.assert_trees_all_close(parts['side_bce'], side, rtol=1e-5)
  chex.assert_trees_all_close(parts['bce'], _np_bce(np.asarray(LOGITS)[:5], labels), rtol=1e-5)


def test_multiclass_side_outputs_below_full_resolution():
  side = jax.random.normal(jax.random.key(8), (8, 2, 3, 3))
  outputs = {'logits': MC_LOGITS, 'side_logits': (side,)}
  config = _config()
  _, parts = jax.jit(lambda o, y: losses.total_loss(o, y, config))(outputs, MC_LABELS)
  _, side_ce = _np_multiclass(side, np.asarray(MC_LABELS)[:, 1::3, 1::2])
  chex.assert_trees_all_close(parts['side_ce'], side_ce, rtol=1e-5)


def test_nnunets_deep_supervision_weights():
  """1/2**i from full resolution down, the lowest 0, normalized (nnUNetTrainer)."""
  assert losses.deep_supervision_weights(2) == (1.0, 0.0)
  np.testing.assert_allclose(losses.deep_supervision_weights(4), np.array([8, 4, 2, 0]) / 14)
  assert sum(losses.deep_supervision_weights(7)) == pytest.approx(1.0)


def test_deep_supervision_as_nnunet_weighs_dice_and_ce_of_every_output():
  """The nnU-Net recipe's loss: each output's Dice + BCE against the labels at its size,
  weighted [2/3, 1/3, 0] for the full, half and quarter resolution outputs (w_dice, w_bce
  weigh each output's terms); padding rows left out of every term."""
  half = jax.random.normal(jax.random.key(9), (8, 3, 3, 1))
  quarter = jax.random.normal(jax.random.key(10), (8, 2, 2, 1))
  rows = jnp.arange(8) < 6
  outputs = {'logits': LOGITS, 'side_logits': (half, quarter)}
  config = _config(deep_supervision='nnunet', w_dice=0.8, w_bce=1.0, dice_smooth=1e-5)
  total, parts = jax.jit(lambda o, y, r: losses.total_loss(o, y, config, rows=r))(
    outputs, LABELS, rows
  )
  labels = np.asarray(LABELS)[:6]

  def both(logits, target):
    logits = np.asarray(logits)[:6]
    return 0.8 * _np_dice(logits, target, 1e-5) + _np_bce(logits, target)

  expected = 2 / 3 * both(LOGITS, labels) + 1 / 3 * both(half, labels[:, 1::2, 1::2])
  chex.assert_trees_all_close(total, expected, rtol=1e-5)
  chex.assert_trees_all_close(parts['deep_supervision'], expected, rtol=1e-5)
  assert 'side_bce' not in parts
