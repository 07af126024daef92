"""The contract every registered network keeps (docs/adding-a-model.md), checked for each
network of ecam_jax/models/registry.py at a small size: its registry entry and docs page,
its training forward pass sharded over 8 devices equal to one device (BatchNorm statistics
included), remat in effect, K + 1 logits, prediction in the input's geometry,
bfloat16 compute with float32 outputs on a non-square input, an input size it cannot take
refused by key, and its export to ONNX. A network's own test module keeps only what is
specific to it (its blocks against NumPy, its reference parameter counts). The whole train
step sharded against one device, rematerialized, is the slow test here (`pytest -m slow`)."""

import dataclasses
import pathlib
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax import configuration
from ecam_jax.configuration import load_config
from ecam_jax.errors import ConfigError
from ecam_jax.models import dropout, options, registry
from ecam_jax.models.build import abstract_variables, build_model

import nifti_fixtures as nf
import numpy_ref as ref
import step_equivalence as se

ROOT = pathlib.Path(__file__).resolve().parents[1]
NETWORKS = sorted(registry.NETWORKS)

# name -> (variant, options, image size): the smallest settings that still run every kind
# of block. A network not listed runs its first preset at base_channels 4 (where it has
# that option) on slices of twice its input multiple.
SMALL = {
  'ecam_unet': ('ec_cam_unet', {'base_channels': 4}, 32),
  'msunet': ('msunet', {'base_channels': 2}, 32),
  'cenet': ('cenet', {'base_channels': 4, 'resnet_depth': 18}, 32),
  'deeplabv3plus': ('deeplabv3plus', {'base_channels': 4, 'resnet_depth': 18}, 32),
  'danet': ('danet', {'base_channels': 8, 'resnet_depth': 18}, 32),
  'hrnet': ('hrnet', {'base_channels': 2, 'size': 'small_v2'}, 64),
  'segformer': ('segformer', {'size': 'b0'}, 64),
}


def small(name: str) -> tuple[str, dict, int]:
  if name in SMALL:
    return SMALL[name]
  entry = registry.NETWORKS[name]
  base = {'base_channels': 4} if 'base_channels' in options.fields(entry.options) else {}
  return next(iter(entry.presets)), base, max(32, 2 * entry.options().input_multiple())


def small_config(name: str, config_file: str = 'configs/default.py'):
  variant, model, size = small(name)
  config = load_config(ROOT / config_file, f'variant={variant}')
  config.model.update(model)
  config.data.image_size = size
  return config


# --- the registry entry and the docs ----------------------------------------------------


@pytest.mark.parametrize('name', NETWORKS)
def test_registry_entry_builds_its_module_with_its_options(name):
  """The entry's module is a Flax module whose `options` field is the entry's options
  class; every preset is a valid setting of it, and every option has a type the check
  knows, a one-line description and a default that passes the check."""
  entry = registry.NETWORKS[name]
  cls = registry.network_class(name)
  hints = typing.get_type_hints(cls)
  assert hints['options'] is entry.options and 'axis_name' in hints
  foldable = entry.options.has_ec_blocks is not options.Options.has_ec_blocks
  assert ('folded' in hints) == foldable
  defaults = entry.options()
  for option_name, field in options.fields(entry.options).items():
    assert field.metadata['doc'] and '\n' not in field.metadata['doc'], option_name
    options.check_value(option_name, field, getattr(defaults, option_name))
  for variant in entry.presets:
    config = load_config(ROOT / 'configs/default.py', f'variant={variant}')
    assert config.model.name == name and config.model.variant == variant
    configuration.check(config)


@pytest.mark.parametrize('name', NETWORKS)
def test_docs_page_shows_the_declared_options(name):
  """docs/networks/<name>.md holds the options table `python -m ecam_jax.models <name>`
  prints (regenerate it there when an option changes)."""
  page = (ROOT / 'docs' / 'networks' / f'{name}.md').read_text()
  assert options.markdown_table(registry.NETWORKS[name].options) in page


# --- training, prediction, precision, sizes ------------------------------------------------


def _step_config(name):
  variant, model, size = small(name)
  config = se.config(variant, size=size, batch=8)
  config.model.update(model)
  configuration.check(config)
  return config


@pytest.mark.parametrize('name', NETWORKS)
def test_sharded_forward_equals_one_device(name):
  """The network's part of the sharded train step: its training forward pass on 8 devices
  equals one device's, logits and BatchNorm statistics (step_equivalence.py says why this
  and tests/test_steps.py together cover the step)."""
  se.assert_forward_equal(_step_config(name), devices=8)


@pytest.mark.parametrize('name', NETWORKS)
def test_remat_checkpoints_the_forward_pass(name):
  """model.remat=True puts jax.checkpoint regions into the network's forward pass (traced),
  so that the backward pass recomputes them; remat=False none of its own."""
  config = _step_config(name)
  size = config.data.image_size
  x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)

  def regions(remat: bool) -> int:
    config.model.remat = remat
    model = build_model(config.model)
    forward = lambda v, x: model.apply(
      v, x, True, mutable=['batch_stats'], rngs={dropout.RNG: jax.random.key(0)}
    )
    jaxpr = str(jax.make_jaxpr(forward)(abstract_variables(model, size), x))
    return len(re.findall(r'\b(?:remat2|checkpoint)\[', jaxpr))  # jax.checkpoint's primitive

  assert regions(True) > regions(False)


@pytest.mark.slow
@pytest.mark.parametrize('name', NETWORKS)
def test_sharded_step_equals_one_device(name):
  """One step on 8 devices, every level rematerialized, against one device without remat:
  loss, gradient norm, counts, parameters, BatchNorm statistics. (Minutes for all; the
  default run checks the network's forward pass and the U-Net's whole step.)"""
  se.assert_one_step_equal(_step_config(name), devices=8, sharded_model={'remat': True})


@pytest.mark.parametrize('name', NETWORKS)
def test_three_classes_give_three_logits_everywhere(name):
  """K + 1 = 3 logits, at the input's size and in every side output (traced; the
  multi-class loss on sharded batches: tests/test_steps.py)."""
  config = small_config(name)
  config.model.num_classes = 3
  model = build_model(config.model)
  size = config.data.image_size
  x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
  out, _ = jax.eval_shape(
    lambda v, x: model.apply(
      v, x, True, mutable=['batch_stats'], rngs={dropout.RNG: jax.random.key(0)}
    ),
    abstract_variables(model, size),
    x,
  )
  assert out['logits'].shape == (2, size, size, 3)
  for logits in out['side_logits']:
    _assert_side_shape(logits.shape, (2, size, size, 3))


def _assert_side_shape(side: tuple, logits: tuple) -> None:
  """A side output is [B, h, w, K] at the logits' size or below it (nnU-Net's deep
  supervision: each decoder stage's head at its own resolution; the loss compares it with
  the labels resized to its size)."""
  b, height, width, k = logits
  assert side[0] == b and side[-1] == k and 1 <= side[1] <= height and 1 <= side[2] <= width


def _variables(config) -> dict:
  """Host-made weights with BatchNorm statistics moved off their initial values."""
  model = build_model(config.model)
  variables = ref.host_variables(abstract_variables(model, config.data.image_size))
  rng = np.random.default_rng(0)
  variables['batch_stats'] = jax.tree.map(
    lambda a: (a + np.abs(rng.standard_normal(a.shape)) * 0.2).astype(np.float32),
    variables.get('batch_stats', {}),  # none in a network without BatchNorm
  )
  return variables


@pytest.mark.parametrize('name', NETWORKS)
def test_prediction_keeps_the_inputs_geometry(name, tmp_path):
  config = small_config(name, 'configs/demo.py')
  config.eval.batch_size = 4
  nf.assert_prediction_keeps_geometry(config, _variables(config), tmp_path, (30, 26, 5))


@pytest.mark.parametrize('name', NETWORKS)
def test_bfloat16_on_a_non_square_input_gives_float32_outputs_at_full_size(name):
  """Traced (no compile): parameters float32, activations bfloat16, logits and side logits
  float32 (the logits at the input's size), in training mode too."""
  config = small_config(name)
  config.model.dtype = 'bfloat16'
  model = build_model(config.model)
  variables = abstract_variables(model, config.data.image_size)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  # 32 x 48 for a network that takes any size (its parameters those of its 32 x 32 slices)
  m = max(16, registry.options_of(config.model).input_multiple())
  x = jax.ShapeDtypeStruct((2, 2 * m, 3 * m, 1), jnp.float32)
  for train in (False, True):
    out, state = jax.eval_shape(
      lambda v, x, train=train: model.apply(
        v,
        x,
        train,
        mutable=['batch_stats', 'intermediates'],
        capture_intermediates=True,
        rngs={dropout.RNG: jax.random.key(0)},
      ),
      variables,
      x,
    )
    assert out['logits'].shape == (2, 2 * m, 3 * m, 1)
    for logits in (out['logits'], *out['side_logits']):
      _assert_side_shape(logits.shape, (2, 2 * m, 3 * m, 1))
      assert logits.dtype == jnp.float32
    dtypes = {a.dtype for a in jax.tree.leaves(state['intermediates'])}
    assert jnp.dtype('bfloat16') in dtypes


@pytest.mark.parametrize('name', NETWORKS)
def test_an_input_size_it_cannot_take_is_refused_naming_the_key(name):
  config = small_config(name)
  m = registry.options_of(config.model).input_multiple()
  if m == 1:
    pytest.skip('the network takes any size')
  bad = max(16, 2 * m) + m // 2  # 16: the smallest image size the config check takes
  config.data.image_size = bad
  with pytest.raises(ConfigError, match=rf'config\.data\.image_size={bad};.*{m}'):
    configuration.check(config)
  model = build_model(config.model)
  with pytest.raises(ValueError, match=rf'multiples of {m}'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, bad, 2 * m, 1))))


@pytest.mark.parametrize('name', NETWORKS)
def test_export_converts_and_agrees_with_jax(name):
  """ONNX (BatchNorm folded into the convs, EC folded where the network has it, side heads
  left out) computes the JAX model's logits on random slices."""
  pytest.importorskip('jax2onnx')
  ort = pytest.importorskip('onnxruntime')
  from ecam_jax.export import conv_folding, folder, network, onnx_model

  config = small_config(name, 'configs/demo.py')
  size = config.data.image_size
  variables = _variables(config)
  images = np.random.default_rng(4).uniform(size=(2, size, size, 1)).astype(np.float32)
  full = build_model(config.model)
  expected = np.asarray(jax.jit(lambda x: full.apply(variables, x)['logits'])(images))
  model, _ = onnx_model.optimize(onnx_model.convert(network.from_variables(config, variables)))
  assert conv_folding.unfolded(model) == []
  session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  (logits,) = session.run(None, {'image': images.transpose(0, 3, 1, 2)})
  tolerance = folder.TOLERANCE * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(logits.transpose(0, 2, 3, 1), expected, rtol=0, atol=tolerance)


# --- the options check -----------------------------------------------------------------


def test_an_unknown_option_is_refused_naming_it_and_the_networks_options():
  config = small_config('unetpp')
  config.model.use_ec = True
  with pytest.raises(
    ConfigError, match=r"config.model.use_ec is not an option of .*'unetpp'.*align_corners"
  ):
    configuration.check(config)


def test_a_network_chosen_by_name_alone_is_told_to_use_its_variant():
  config = load_config(ROOT / 'configs/default.py')
  config.model.name = 'unetpp'
  with pytest.raises(ConfigError, match=re.escape(':variant=unetpp')):
    configuration.check(config)


def test_variant_names_are_unique_and_every_table_row_has_one():
  """The 22 networks of the paper's tables keep their `:variant=NAME`, and the rows this
  project adds (`in_paper` False: nnunet2d) have one too."""
  from ecam_jax.experiments import tables

  presets = [v for entry in registry.NETWORKS.values() for v in entry.presets]
  assert len(presets) == len(set(presets)) == len(registry.VARIANTS)
  rows = [row for table in tables.TABLES.values() for row in table.rows]
  assert len({row.variant for row in rows if row.in_paper}) == 22
  assert {row.variant for row in rows} <= set(registry.VARIANTS)


def test_options_are_frozen_and_hashable():
  """A network's options are a field of its Flax module: jit caches compiled programs by
  it, so it must hash (and compare) by value."""
  a = registry.options_of(small_config('hrnet').model)
  b = registry.options_of(small_config('hrnet').model)
  assert a == b and hash(a) == hash(b)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.size = 'full'
