"""Conv unit, EC and its folding, up-conv and max-pool against NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.models.layers import (
  AsymConv,
  ConvUnit,
  UpConv2x2,
  fold_branches,
  fold_ec,
  make_norm,
  max_pool_2x2,
)

import numpy_ref as ref

NORM = make_norm(None, 0.9, ref.EPS, jnp.float32)


def _x(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize('dilation', [1, 2])
def test_conv_unit_matches_numpy(dilation):
  x = _x((2, 8, 8, 3))
  module = ConvUnit(features=5, norm=NORM, dilation=dilation)
  params = ref.randomize(module.init(jax.random.key(0), x, train=False)['params'])
  out, _ = module.apply(
    {'params': params, 'batch_stats': module.init(jax.random.key(0), x, False)['batch_stats']},
    x,
    train=True,
    mutable=['batch_stats'],
  )
  chex.assert_trees_all_close(out, ref.conv_unit(x, params, dilation), atol=1e-4, rtol=1e-4)


def _ec(x, seed=0):
  module = AsymConv(features=6, norm=NORM)
  variables = module.init(jax.random.key(0), x, train=False)
  return module, {
    'params': ref.randomize(variables['params'], seed),
    'batch_stats': variables['batch_stats'],
  }


def test_ec_matches_numpy():
  x = _x((2, 7, 9, 4))
  module, variables = _ec(x)
  out, _ = module.apply(variables, x, train=True, mutable=['batch_stats'])
  chex.assert_trees_all_close(out, ref.ec_block(x, variables['params']), atol=1e-4, rtol=1e-4)


def test_folded_ec_equals_unfolded_after_statistics_moved():
  x = _x((4, 8, 8, 4))
  module, variables = _ec(x, seed=3)
  for step in range(5):  # move the running statistics away from (0, 1)
    batch = _x((4, 8, 8, 4), seed=10 + step) * 2.0 + 0.5
    _, updates = module.apply(variables, batch, train=True, mutable=['batch_stats'])
    variables = {**variables, **updates}
  stats = variables['batch_stats']
  assert float(jnp.abs(stats['square_bn']['mean']).max()) > 0.05
  assert float(jnp.abs(stats['hor_bn']['var'] - 1).max()) > 0.05
  unfolded = module.apply(variables, x, train=False)
  folded_module = AsymConv(features=6, norm=NORM, folded=True)
  folded = folded_module.apply(fold_ec(variables, ref.EPS), x, train=False)
  chex.assert_trees_all_close(folded, unfolded, atol=1e-4, rtol=1e-4)


def test_folded_conv_computes_the_three_branches_in_eval():
  """The fused kernel and bias, applied as one 3x3 conv, give what the three convs and
  their BatchNorms give in eval mode, both computed in NumPy from the kernels, BN
  parameters and (non-trivial) running statistics."""
  x = _x((2, 6, 7, 3))
  _, variables = _ec(x, seed=4)
  stats = ref.randomize(variables['batch_stats'], 5)
  stats = {
    name: {'mean': s['mean'] + 0.5, 'var': np.abs(s['var']) + 0.3} for name, s in stats.items()
  }
  fused = fold_branches(variables['params'], stats, ref.EPS)
  assert fused['kernel'].shape == (3, 3, 3, 6) and fused['bias'].shape == (6,)
  got = ref.conv2d(x, fused['kernel'], bias=np.asarray(fused['bias'], np.float64))
  expected = ref.ec_branches_eval(x, variables['params'], stats)
  chex.assert_trees_all_close(got, expected, atol=1e-4, rtol=1e-4)
  # The statistics matter: the block with BN at (mean 0, var 1) differs.
  unit = {k: {'mean': np.zeros(6), 'var': np.ones(6)} for k in stats}
  assert np.abs(ref.ec_branches_eval(x, variables['params'], unit) - expected).max() > 0.1


def test_fold_ec_keeps_other_modules_and_their_statistics():
  variables = {
    'params': {
      'ec': {
        k: {'kernel': jnp.ones((kh, kw, 2, 2))}
        for k, (kh, kw) in (('square', (3, 3)), ('hor', (1, 3)), ('ver', (3, 1)))
      }
      | {f'{k}_bn': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)} for k in ('square', 'hor', 'ver')},
      'other': {
        'Conv_0': {'kernel': jnp.ones((1, 1, 2, 2))},
        'BatchNorm_0': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)},
      },
    },
    'batch_stats': {
      'ec': {
        f'{k}_bn': {'mean': jnp.zeros(2), 'var': jnp.ones(2)} for k in ('square', 'hor', 'ver')
      },
      'other': {'BatchNorm_0': {'mean': jnp.full(2, 3.0), 'var': jnp.full(2, 2.0)}},
    },
  }
  folded = fold_ec(variables, ref.EPS)
  assert set(folded['params']['ec']) == {'fused'}
  assert folded['params']['ec']['fused']['kernel'].shape == (3, 3, 2, 2)
  assert 'ec' not in folded['batch_stats']
  chex.assert_trees_all_equal(folded['batch_stats']['other'], variables['batch_stats']['other'])
  chex.assert_trees_all_equal(folded['params']['other'], variables['params']['other'])


def test_up_conv_matches_numpy_transposed_conv():
  x = _x((2, 3, 4, 5))
  module = UpConv2x2(features=7)
  params = ref.randomize(module.init(jax.random.key(0), x)['params'])
  out = module.apply({'params': params}, x)
  expected = ref.up_conv_2x2(x, np.asarray(params['kernel']), np.asarray(params['bias']))
  chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)


def test_max_pool_matches_numpy():
  x = np.asarray(_x((2, 6, 8, 3)))
  expected = np.max([x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)], axis=0)
  chex.assert_trees_all_equal(np.asarray(max_pool_2x2(jnp.asarray(x))), expected)
