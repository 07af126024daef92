"""The whole network: every variant's parameters, shapes at the paper's size,
gradients, rematerialization and folding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax import losses
from ecam_jax.configuration import check, load_config
from ecam_jax.errors import ConfigError
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.models.layers import fold_ec
from ecam_jax.models.unet import WIDTHS
from ecam_jax.models.unet_options import PRESETS

import numpy_ref as ref

CONFIG = 'configs/default.py'


def _config(variant, base=4):
  config = load_config(CONFIG, f'variant={variant}')
  config.model.base_channels = base
  return config


def _param_count(variant, base=4, size=32):
  model = build_model(_config(variant, base).model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1))))
  return sum(x.size for x in jax.tree.leaves(shapes['params'])), shapes['params']


def _extra(b):
  """Closed-form parameter counts of each part at base b (C = 16 b at the bottleneck)."""
  c = 16 * b
  conv_unit = lambda i, o, k=9: k * i * o + 2 * o  # conv without bias + BN scale/bias
  widths = [b * w for w in WIDTHS]
  encoder_convs = [(1, widths[0]), (widths[0], widths[0])]
  for i, o in zip(widths[:-1], widths[1:], strict=True):
    encoder_convs += [(i, o), (o, o)]
  return {
    'mus': 3 * conv_unit(c, c) + conv_unit(3 * c, c, 1),
    'cc': 3 + 2 + 7 + 2 + 7 + 1,
    'fuse': conv_unit(2 * c, c, 1),
    'se': 2 * c * (c // 16),
    'cbam': 2 * c * (c // 16) + 7 * 7 * 2 + 2,
    'side': c + 1,
    'ec': sum(6 * i * o + 4 * o for i, o in encoder_convs),
  }


@pytest.mark.parametrize('variant', sorted(PRESETS))
def test_every_variant_has_exactly_its_parameters(variant):
  b = 4
  base, _ = _param_count('unet', b)
  count, params = _param_count(variant, b)
  m = _config(variant, b).model
  extra = _extra(b)
  expected = base
  expected += extra['cc'] * m.use_cc + extra['mus'] * m.use_mus + extra['ec'] * m.use_ec
  expected += extra['side'] * m.use_dws
  expected += extra['fuse'] * (m.use_mus and m.attention != 'none' and m.fusion == 'conv')
  expected += extra.get(m.attention, 0)
  assert count == expected, (variant, count - base)
  bottleneck = params.get('bottleneck', {})
  assert ('coa' in bottleneck) == (m.attention == 'coa' and m.use_cc)
  assert ('mus' in bottleneck) == m.use_mus
  assert any(k.startswith('side_') for k in params) == m.use_dws
  assert ('square' in params['encoder1']['conv0']) == m.use_ec


def test_plain_unet_at_base_64_is_the_usual_31m():
  count, params = _param_count('unet', 64, 64)
  assert count == 31_036_481
  assert set(params) == {f'encoder{i}' for i in range(1, 6)} | {
    f'decoder{i}' for i in range(1, 5)
  } | {'head'}


def test_sc_changes_the_function_but_adds_no_parameters():
  """unet_sc's bottleneck output is SC(F, F) + F of unet's (eq. 8-9), same parameters."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  plain, sc = build_model(_config('unet').model), build_model(_config('unet_sc').model)
  variables = ref.host_variables(abstract_variables(plain, 32))
  variables = {**variables, 'params': ref.randomize(variables['params'], 3, 0.3)}

  def bottleneck(model):
    only = lambda module, _: module.name == 'bottleneck'
    _, state = jax.jit(lambda v: model.apply(v, x, capture_intermediates=only))(variables)
    return np.asarray(state['intermediates']['bottleneck']['__call__'][0])

  f = bottleneck(plain)
  chex.assert_trees_all_close(
    bottleneck(sc), ref.spatial_correlation(f, f) + f, rtol=1e-4, atol=1e-5
  )
  assert np.abs(ref.spatial_correlation(f, f)).max() > 0.1 * np.abs(f).max()


def test_full_model_at_512_builds_with_side_logits():
  model = build_model(load_config(CONFIG).model)
  x = jax.ShapeDtypeStruct((2, 512, 512, 1), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x.shape and jnp.zeros(x.shape)))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out['logits'].shape == (2, 512, 512, 1)
  assert [s.shape for s in out['side_logits']] == [(2, 512, 512, 1)]
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  assert count == 77_176_792


def test_side_outputs_on_decoder_levels():
  config = _config('unet_dws')
  config.model.side_outputs = ('bottleneck', 'decoder1', 'decoder3')
  model = build_model(config.model)
  x = jnp.zeros((1, 32, 32, 1))
  out = jax.jit(model.apply)(ref.host_variables(abstract_variables(model, 32)), x)
  assert len(out['side_logits']) == 3
  assert all(s.shape == (1, 32, 32, 1) for s in out['side_logits'])


def test_folded_model_equals_unfolded_in_eval():
  config = _config('ec_cam_unet')
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  model = build_model(config.model)
  variables = ref.host_variables(abstract_variables(model, 32))
  variables = {
    'params': ref.randomize(variables['params'], 7, 0.2),
    'batch_stats': variables['batch_stats'],
  }
  train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1])
  for step in range(3):
    variables = {**variables, **train_apply(variables, x * (step + 1))}
  unfolded = jax.jit(model.apply)(variables, x)
  folded_model = build_model(config.model, folded=True)
  folded = jax.jit(folded_model.apply)(fold_ec(variables, config.model.bn_epsilon), x)
  scale = float(jnp.abs(unfolded['logits']).max())
  chex.assert_trees_all_close(folded, unfolded, atol=1e-4 * scale, rtol=1e-4)
  assert jax.tree.structure(
    jax.eval_shape(lambda: folded_model.init(jax.random.key(0), x))
  ) == jax.tree.structure(fold_ec(variables, config.model.bn_epsilon))


@pytest.mark.parametrize('variant', sorted(PRESETS))
def test_every_variant_config_passes_the_check(variant):
  check(load_config(CONFIG, f'variant={variant}'))


def test_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match='ec_cam_unet'):
    load_config(CONFIG, 'variant=nope')


def test_input_not_multiple_of_16_is_a_clear_error():
  model = build_model(_config('unet').model)
  with pytest.raises(ValueError, match='multiples of 16'):
    model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 1)))
  np.testing.assert_equal(WIDTHS, (1, 2, 4, 8, 16))


def _numpy_dice_and_bce(logits, labels):
  p = ref.sigmoid(np.asarray(logits, np.float64))
  y = np.asarray(labels, np.float64)
  dice = 1.0 - (2.0 * (p * y).sum() + 1.0) / (p.sum() + y.sum() + 1.0)
  bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
  return dice, bce


def test_unet_variant_trains_with_the_dice_loss_only_and_the_others_keep_bce():
  """The paper's U-Net baseline (Table I) has no BCE term (its preset, unet_options.py)."""
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
  labels = (rng.random((2, 8, 8, 1)) < 0.3).astype(np.float32)
  dice, bce = _numpy_dice_and_bce(logits, labels)
  outputs = {'logits': jnp.asarray(logits), 'side_logits': ()}
  unet = load_config(CONFIG, 'variant=unet').loss
  assert (unet.w_dice, unet.w_bce) == (1.0, 0.0)
  np.testing.assert_allclose(float(losses.total_loss(outputs, labels, unet)[0]), dice, rtol=1e-5)
  for variant in sorted(set(PRESETS) - {'unet'}):
    loss = load_config(CONFIG, f'variant={variant}').loss
    assert (loss.w_dice, loss.w_bce) == (1.0, 1.0), variant
  full = load_config(CONFIG).loss
  np.testing.assert_allclose(
    float(losses.total_loss(outputs, labels, full)[0]), dice + bce, rtol=1e-5
  )


def _scan_lengths(jaxpr) -> list[int]:
  """Lengths of every scan (lax.map) in a jaxpr and the jaxprs nested in it."""
  lengths = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'scan':
      lengths.append(eqn.params['length'])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          lengths += _scan_lengths(inner)
  return lengths


def test_attention_chunk_sets_the_rows_per_block_of_chunked_sc():
  """64x64 input: 4x4 = 16 bottleneck positions, so 5 rows per block make 4 blocks (the
  last one ragged) and the default 256 makes one; the output is the naive SC's."""
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
  config = _config('unet_sc')
  naive = build_model(config.model)
  variables = ref.host_variables(abstract_variables(naive, 64))
  config.model.attention_impl = 'naive'
  expected = jax.jit(build_model(config.model).apply)(variables, x)['logits']
  config.model.attention_impl = 'chunked'
  for chunk, blocks in ((5, 4), (256, 1)):
    config.model.attention_chunk = chunk
    model = build_model(config.model)
    jaxpr = jax.make_jaxpr(model.apply)(variables, x).jaxpr
    assert _scan_lengths(jaxpr) == [blocks], chunk
  got = jax.jit(model.apply)(variables, x)['logits']
  chex.assert_trees_all_close(got, expected, atol=1e-5, rtol=1e-4)


def test_an_option_missing_from_the_config_is_named():
  config = _config('unet_sc')
  del config.model['attention_chunk']
  with pytest.raises(ConfigError, match=r'config\.model\.attention_chunk is missing'):
    build_model(config.model)
