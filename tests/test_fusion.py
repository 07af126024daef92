"""The bottleneck's three fusions (Table III) against NumPy compositions of the blocks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models import registry
from ecam_jax.models.fusion import Bottleneck
from ecam_jax.models.layers import make_norm

import numpy_ref as ref

NORM = make_norm(None, 0.9, ref.EPS, jnp.float32)


def _run(f, **settings):
  """The full model's bottleneck (configs/default.py) with `settings` changed; rates 1-3
  so that every atrous tap lands inside the 6x6 features."""
  config = load_config('configs/default.py').model
  config.update(aspp_rates=(1, 2, 3), **settings)
  module = Bottleneck(options=registry.options_of(config), norm=NORM)
  variables = module.init(jax.random.key(0), f, train=False)
  params = ref.randomize(variables.get('params', {}), seed=2, scale=0.3)
  out, _ = module.apply(
    {'params': params, 'batch_stats': variables.get('batch_stats', {})},
    f,
    train=True,
    mutable=['batch_stats'],
  )
  return out, params


F = jax.random.normal(jax.random.key(1), (2, 6, 6, 16)) * 0.5


def test_conv_fusion_is_eq_10():
  out, p = _run(F, fusion='conv')
  f_a = ref.collaborative_attention(F, p['coa'])
  f_s = ref.multiscale(F, p['mus'], (1, 2, 3))
  expected = ref.conv_unit(np.concatenate([f_a, f_s], -1), p['fuse'])
  chex.assert_trees_all_close(out, expected, atol=1e-4, rtol=1e-4)


def test_add_fusion():
  out, p = _run(F, fusion='add')
  expected = ref.collaborative_attention(F, p['coa']) + ref.multiscale(F, p['mus'], (1, 2, 3))
  assert 'fuse' not in p
  chex.assert_trees_all_close(out, expected, atol=1e-4, rtol=1e-4)


def test_serial_fusion():
  out, p = _run(F, fusion='serial')
  expected = ref.multiscale(ref.collaborative_attention(F, p['coa']), p['mus'], (1, 2, 3))
  chex.assert_trees_all_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
  'kwargs,expected',
  [
    (dict(attention='none', use_cc=False, use_sc=False, use_mus=False), lambda f, p: f),
    (
      dict(attention='none', use_cc=False, use_sc=False),
      lambda f, p: ref.multiscale(f, p['mus'], (1, 2, 3)),
    ),
    (dict(use_mus=False), lambda f, p: ref.collaborative_attention(f, p['coa'])),
    (
      dict(attention='se', use_cc=False, use_sc=False, use_mus=False),
      lambda f, p: ref.squeeze_excitation(f, p['se']),
    ),
    (
      dict(attention='cbam', use_cc=False, use_sc=False, use_mus=False),
      lambda f, p: ref.cbam(f, p['cbam']),
    ),
  ],
)
def test_single_parts(kwargs, expected):
  out, p = _run(F, **kwargs)
  chex.assert_trees_all_close(out, expected(np.asarray(F, np.float64), p), atol=1e-4, rtol=1e-4)
