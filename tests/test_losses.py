"""The loss (eq. 11-13, 17) against NumPy, alone and summed over a sharded batch."""

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
    dict(w_dice=1.0, w_bce=1.0, w_side=1.0, alpha=None, dice_smooth=1.0)
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
