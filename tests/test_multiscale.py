"""MuS (ASPP) against NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ecam_jax.models.layers import make_norm
from ecam_jax.models.multiscale import MultiScale

import numpy_ref as ref

NORM = make_norm(None, 0.9, ref.EPS, jnp.float32)
PAPER = dict(norm=NORM, rates=(6, 12, 18), use_1x1_branch=False, use_image_pool=False)


def test_multiscale_matches_numpy():
  # 20x20 features: rate 6 and 12 taps land inside, rate 18 mostly in the zero padding.
  f = jax.random.normal(jax.random.key(1), (2, 20, 20, 4))
  module = MultiScale(**PAPER)
  variables = module.init(jax.random.key(0), f, train=False)
  params = ref.randomize(variables['params'])
  out, _ = module.apply(
    {'params': params, 'batch_stats': variables['batch_stats']},
    f,
    train=True,
    mutable=['batch_stats'],
  )
  assert params['project']['Conv_0']['kernel'].shape == (1, 1, 12, 4)
  chex.assert_trees_all_close(out, ref.multiscale(f, params), atol=1e-4, rtol=1e-4)


def test_multiscale_options_add_branches():
  f = jnp.ones((1, 8, 8, 4))
  plain = MultiScale(**PAPER).init(jax.random.key(0), f, train=False)['params']
  both = MultiScale(**{**PAPER, 'use_1x1_branch': True, 'use_image_pool': True})
  both = both.init(jax.random.key(0), f, train=False)['params']
  assert set(both) - set(plain) == {'conv1x1', 'image_pool'}
  assert both['project']['Conv_0']['kernel'].shape == (1, 1, 5 * 4, 4)
  assert np.prod(both['conv1x1']['Conv_0']['kernel'].shape) == 16
