"""Dropout and stochastic depth (models/dropout.py): the rate and the 1 / (1 - rate)
scaling, what a draw zeroes (an element, a channel of a row, a whole row), the identity
outside training, and the same draw for a row on any number of devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ecam_jax import parallel
from ecam_jax.models.dropout import RNG, Dropout, DropPath

RATE = 0.25


def _apply(module, x, key=0):
  return np.asarray(module.apply({}, x, True, rngs={RNG: jax.random.key(key)}))


def _x(shape=(8, 16, 16, 32)):
  return np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)  # never 0


@pytest.mark.parametrize(
  ('module', 'zeroed_together'),
  [
    (Dropout(RATE), ()),
    (Dropout(RATE, channelwise=True), (1, 2)),  # a channel of a row: all its pixels
    (DropPath(RATE), (1, 2, 3)),  # a whole row
  ],
)
def test_rate_scaling_and_what_is_zeroed(module, zeroed_together):
  x = _x()
  out = _apply(module, x)
  dropped = out == 0
  np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - RATE), rtol=1e-6)
  for axis in zeroed_together:  # constant along the axes dropped together
    assert (dropped == dropped.take([0], axis=axis)).all()
  units = dropped.reshape(-1).size if not zeroed_together else None
  fraction = dropped.mean()
  if units:  # 65536 independent draws: 0.25 +- 0.0017 (1 sd)
    assert abs(fraction - RATE) < 0.01, fraction
  else:  # fewer draws (256 channels, 8 rows): some but not all dropped
    assert 0 < fraction < 1
  assert not np.array_equal(dropped, _apply(module, x, key=1) == 0)  # the key matters


def test_outside_training_or_at_rate_0_it_is_the_identity_and_needs_no_key():
  x = _x()
  for module in (Dropout(RATE), Dropout(RATE, channelwise=True), DropPath(RATE)):
    np.testing.assert_array_equal(module.apply({}, x, False), x)
  np.testing.assert_array_equal(Dropout(0.0).apply({}, x, True), x)


@pytest.mark.parametrize('devices', [2, 8])
def test_a_row_draws_the_same_mask_on_any_number_of_devices(devices):
  x = _x((8, 4, 4, 16))
  single = _apply(Dropout(RATE), x)
  mesh = parallel.data_mesh(jax.devices()[:devices])
  module = Dropout(RATE, axis_name=parallel.AXIS)

  def per_device(x, key):
    return module.apply({}, x, True, rngs={RNG: key})

  sharded = jax.jit(
    jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(parallel.AXIS), P()), out_specs=P(parallel.AXIS)
    )
  )(x, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(sharded) == 0, single == 0)
  np.testing.assert_allclose(sharded, single, rtol=1e-6)
