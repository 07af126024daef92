"""Every value the config check accepts works (issue 11, item 4).

The walk: every choice-valued key (configuration.CHOICES) and true/false switch outside
config.model, and for each registered network every option it declares with choices or
true/false (each network's own options: the options every network has, its dtype, remat,
class count and BatchNorm settings, are the contract tests/test_networks.py runs for each
network), each side output and both kinds of attention_scale. A value that reaches the
train step is trained for ONE sharded step (batch 8 over the 8 test devices, base 4,
32x32) by one of the few configs in TRAINED, where it is in effect (e.g. a fusion only
with MuS and an attention on), or, for the configs in TRACED, its sharded step is traced
whole (shapes and dtypes of every operation, no compile) because another test of the
default suite trains it, or because it only repeats code a trained config runs and
compiling it costs minutes on a CPU. The rest (data and evaluation keys) only need the
check to accept them. Values the check must refuse raise a ConfigError naming the key.
A value the check accepts that no config here covers fails
test_every_accepted_value_is_covered, so a new choice cannot go untested.
"""

import re

import jax
import ml_collections
import numpy as np
import pytest

from ecam_jax import configuration, parallel, state, steps
from ecam_jax.configuration import load_config
from ecam_jax.errors import ConfigError
from ecam_jax.models import options, registry
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.optim import make_optimizer

import numpy_ref as ref

SIZE, BATCH = 32, 8
SIDES = ('bottleneck', 'decoder1', 'decoder2', 'decoder3')

# Each config switches on only what its values need (a full model compiles several times
# slower); together they put every accepted model and train value in effect at least once.
# (CoA's halves alone, Table II's unet_cc and unet_sc, are checked block by block in
# test_attention.py; here use_cc and use_sc are values like the others.)
TRAINED = {
  'sc_chunked_rsqrt_constant_skip': (
    'unet_sc',
    {
      'model.attention_impl': 'chunked',
      'model.attention_chunk': 3,  # 2x2 = 4 bottleneck rows: a ragged last block
      'model.attention_scale': 'rsqrt',
      'train.schedule': 'constant',
      'train.nonfinite': 'skip',
      'train.decoupled_weight_decay': True,
    },
  ),
  'coa_fused_conv_aspp_options': (
    'unet_coag_musfu',
    {'model.aspp_1x1_branch': True, 'model.aspp_image_pool': True},
  ),
  'coa_naive_bf16_side': (
    'unet_coa',
    {
      'model.attention_impl': 'naive',
      'model.attention_scale': 0.5,
      'model.dtype': 'bfloat16',
      'model.use_dws': True,
    },
  ),
  'se_add_sides_remat': (
    'unet_se',
    {
      'model.use_mus': True,
      'model.fusion': 'add',
      'model.use_dws': True,
      'model.side_outputs': SIDES,
      'model.remat': True,
      'loss.deep_supervision': 'nnunet',  # nnU-Net's weights over the four side outputs
    },
  ),
  'cbam_serial_nnunet_recipe': (
    'unet_cbam',
    {
      'model.use_mus': True,
      'model.fusion': 'serial',
      'train.optimizer': 'sgd',
      'train.schedule': 'poly',
      'train.nesterov': False,
      'augment.pipeline': 'nnunet',
    },
  ),
}

# Traced, not run: (variant, changes, why). The network tests named train the same values
# in their sharded-step tests (tests/step_equivalence.py).
TRACED = {
  'unetpp_single_head_half_pixel': (
    'unetpp',
    {'model.deep_supervision': False, 'model.align_corners': False},
    'tests/test_networks.py trains UNet++ with its heads; without them three heads are gone; '
    "the half-pixel resize is tests/test_resize.py's against PyTorch's formula",
  ),
  'deeplabv3plus_os8_resnet18': (
    'deeplabv3plus',
    {'model.output_stride': 8, 'model.resnet_depth': 18},
    'tests/test_networks.py trains it at stride 16; stride 8 dilates one more stage '
    '(tests/test_resnet.py: the dilated ResNet against the strided one)',
  ),
  'danet_os16_no_aux': (
    'danet',
    {'model.output_stride': 16, 'model.deep_supervision': False},
    'tests/test_networks.py trains DA-Net at stride 8 with its auxiliary heads',
  ),
  'plain_ec': (
    'unet_ec',
    {},
    "EC convs: test_steps.py trains them in the full model, test_infer.py's run in unet_ec",
  ),
  'cenet_resnet50': (
    'cenet',
    {'model.resnet_depth': 50},
    "ResNet-50's Bottlenecks: tests/test_resnet.py checks them against NumPy",
  ),
  'unetpp_deep_supervision': ('unetpp', {}, 'tests/test_networks.py trains it'),
  'nnunet2d': ('nnunet2d', {}, 'tests/test_networks.py trains it, with its heads and biases'),
  'nnunet2d_no_heads_no_biases': (
    'nnunet2d',
    {'model.deep_supervision': False, 'model.conv_bias': False},
    'the trained network without its side heads and conv biases: less of the same code',
  ),
  'cenet_resnet18': (
    'cenet',
    {'model.resnet_depth': 18},
    "ResNet-34's BasicBlocks, fewer; DeepLabV3+ trains a ResNet-18 (TRAINED)",
  ),
  'cenet_resnet34': ('cenet', {}, "ResNet-18's BasicBlocks, more of them (tests/test_networks.py)"),
  'cenet_resnet101': (
    'cenet',
    {'model.resnet_depth': 101},
    "ResNet-50's Bottlenecks, 23 in stage 3 instead of 6",
  ),
  'deeplabv3plus_os16': (
    'deeplabv3plus',
    {},
    'tests/test_networks.py trains output stride 16 (on a ResNet-18)',
  ),
  'danet_os8_aux_chunked': (
    'danet',
    {},
    'tests/test_networks.py trains output stride 8, aux heads, chunked PAM (on a ResNet-18)',
  ),
  'hrnet_small_v2': ('hrnet', {'model.size': 'small_v2'}, 'tests/test_networks.py trains it'),
  'hrnet_full': ('hrnet', {}, "small_v2's modules and blocks, more of them (3 min to compile)"),
  'segformer_b0': (
    'segformer',
    {'model.size': 'b0'},
    'tests/test_networks.py trains it',
  ),
  'segformer_b2': ('segformer', {}, "B0's blocks, wider and more of them"),
}

# Values the check must refuse: (changes, the key its message names).
REFUSED = [
  ({'model.attention': 'eca'}, 'model.attention'),
  ({'model.fusion': 'concat'}, 'model.fusion'),
  ({'model.attention_impl': 'flash'}, 'model.attention_impl'),
  ({'model.dtype': 'float16'}, 'model.dtype'),
  ({'model.attention_scale': 0.0}, 'model.attention_scale'),
  ({'model.attention_scale': 'sqrt'}, 'model.attention_scale'),
  ({'model.side_outputs': ('decoder4',)}, 'model.side_outputs'),
  ({'model.num_classes': 2}, 'model.num_classes'),
  ({'model.use_cc': False, 'model.use_sc': False}, 'model.attention'),  # CoA with no part
  ({'model.attention': 'se'}, 'model.use_cc'),  # CC and SC are parts of CoA only
  ({'train.schedule': 'linear'}, 'train.schedule'),
  ({'train.nonfinite': 'ignore'}, 'train.nonfinite'),
  ({'data.layout': 'decathlon'}, 'data.layout'),
  ({'data.modality': 'PET'}, 'data.modality'),
]

# Where a U-Net option is in effect; everywhere else it is ignored, and a config that sets
# it proves nothing. Every other option of a network is in effect in that network.
_SC = lambda m: m.attention == 'coa' and m.use_sc
IN_EFFECT = {
  'ecam_unet:model.fusion': lambda m: m.use_mus and m.attention != 'none',
  'ecam_unet:model.attention_impl': _SC,
  'ecam_unet:model.attention_scale': _SC,
  'ecam_unet:model.aspp_1x1_branch': lambda m: m.use_mus,
  'ecam_unet:model.aspp_image_pool': lambda m: m.use_mus,
  'ecam_unet:model.side_outputs': lambda m: m.use_dws,
}
# Options whose every value another test runs through the same code.
COVERED_ELSEWHERE = {
  'danet:model.attention_impl': 'tests/test_danet.py: PAM against NumPy in each implementation',
  'deeplabv3plus:model.resnet_depth': 'the ResNet of every depth: cenet rows, tests/test_resnet.py',
  'danet:model.resnet_depth': 'the ResNet of every depth: cenet rows, tests/test_resnet.py',
}


def _set(config: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
  for key, value in changes.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _config(variant: str = 'ec_cam_unet', changes: dict | None = None):
  config = load_config('configs/default.py', f'variant={variant}')
  if 'base_channels' in config.model:
    config.model.base_channels = 4
  config.data.image_size = SIZE
  config.train.batch_size = BATCH
  return _set(config, changes or {})


def _switches() -> list[str]:
  """The true/false keys of configs/default.py outside config.model."""
  config = _config()
  return [
    f'{section}.{key}'
    for section, values in config.items()
    if isinstance(values, ml_collections.ConfigDict) and section != 'model'
    for key, value in values.items()
    if isinstance(value, bool)
  ]


def _walked() -> dict[str, tuple]:
  """Every (key, accepted values) the walk covers; a network's option as 'network:model.x'."""
  walked = {key: tuple(values) for key, values in configuration.CHOICES.items()}
  walked.update({key: (False, True) for key in _switches()})
  for network, entry in registry.NETWORKS.items():
    common = options.fields(options.Options)
    for name, field in options.fields(entry.options).items():
      key = f'{network}:model.{name}'
      if name in common or key in COVERED_ELSEWHERE:
        continue
      if field.metadata['choices'] is not None:
        walked[key] = tuple(field.metadata['choices'])
      elif field.type is bool:
        walked[key] = (False, True)
  walked['ecam_unet:model.side_outputs'] = SIDES  # each entry
  walked['ecam_unet:model.attention_scale'] = ('number', 'rsqrt')
  return walked


def _value(config: ml_collections.ConfigDict, key: str):
  section, field = key.split(':')[-1].split('.')
  return config[section][field]


def _trained_values(key: str) -> set:
  """The values of `key` that some config of TRAINED or TRACED sets, where in effect."""
  network = key.split(':')[0] if ':' in key else None
  values = set()
  configs = [*TRAINED.values(), *((v, c) for v, c, _ in TRACED.values())]
  for variant, changes in configs:
    config = _config(variant, changes)
    if network is not None and config.model.name != network:
      continue
    if not IN_EFFECT.get(key, lambda m: True)(config.model):
      continue
    value = _value(config, key)
    if key.endswith('model.side_outputs'):
      values.update(value)
    elif key.endswith('model.attention_scale'):
      values.add('rsqrt' if value == 'rsqrt' else 'number')
    else:
      values.add(value)
  return values


def test_every_accepted_value_is_covered():
  """Values that reach the train step are trained below; data and evaluation values are
  accepted by the check (they cannot train a step without a dataset)."""
  for key, values in _walked().items():
    if key == 'recipe':  # a recipe only sets keys whose values are walked themselves
      for value in values:
        configuration.check(load_config('configs/default.py', f'recipe={value}'))
      continue
    if key.split('.')[0] in ('data', 'eval'):
      for value in values:
        configuration.check(_set(_config(), {key: value}))
      continue
    missing = set(values) - _trained_values(key)
    assert not missing, (
      f'config.{key} values {missing} are accepted but no TRAINED or TRACED config uses them'
    )


@pytest.mark.parametrize('changes,key', REFUSED, ids=[key for _, key in REFUSED])
def test_the_check_refuses_and_names_the_key(changes, key):
  with pytest.raises(ConfigError, match=re.escape(key)):
    configuration.check(_config(changes=changes))


@pytest.mark.parametrize('name', sorted(TRAINED))
def test_one_sharded_train_step(name, monkeypatch):
  variant, changes = TRAINED[name]
  config = _config(variant, changes)
  configuration.check(config)
  # Parameters drawn on the host instead of by a compiled init (several seconds per model);
  # the rest of the state is create_train_state's own.
  monkeypatch.setattr(
    state,
    'init_variables',
    lambda model, seed, size: ref.host_variables(abstract_variables(model, size), seed),
  )
  mesh = parallel.data_mesh(jax.devices()[:8])
  model = build_model(config.model, axis_name=parallel.AXIS)
  tx, schedule = make_optimizer(config.train, 10)
  initial = state.create_train_state(model, tx, config.seed, SIZE)
  before = jax.device_get(initial.params)
  rng = np.random.default_rng(0)
  image = rng.random((BATCH, SIZE, SIZE, 1), dtype=np.float32)
  batch = parallel.global_batch(mesh, {'image': image, 'label': (image > 0.7).astype(np.uint8)})
  train_step = steps.make_train_step(model, tx, schedule, config, mesh)
  after, metrics = train_step(jax.device_put(initial, parallel.replicated(mesh)), batch)
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics['loss']) and bool(metrics['finite']), metrics
  assert int(after.step) == 1
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), after.params, before)
  assert max(jax.tree.leaves(moved)) > 0
  # Whatever the compute dtype (model.dtype), the state and the loss stay float32.
  assert metrics['loss'].dtype == np.float32
  for tree in (after.params, after.batch_stats, after.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {np.dtype('float32')}


@pytest.mark.parametrize('name', sorted(TRACED))
def test_one_traced_sharded_step(name):
  """The whole sharded step traced with abstract values: the network, loss, gradient and
  update for these values type-check and keep the state's structure, shapes and dtypes."""
  variant, changes, _ = TRACED[name]
  config = _config(variant, changes)
  configuration.check(config)
  mesh = parallel.data_mesh(jax.devices()[:8])
  model = build_model(config.model, axis_name=parallel.AXIS)
  tx, schedule = make_optimizer(config.train, 10)
  initial = jax.eval_shape(lambda: state.create_train_state(model, tx, config.seed, SIZE))
  batch = {
    'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 1), np.float32),
    'label': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 1), np.uint8),
  }
  train_step = steps.make_train_step(model, tx, schedule, config, mesh)
  after, metrics = jax.eval_shape(train_step, initial, batch)
  shape_dtype = lambda x: (x.shape, x.dtype)
  assert jax.tree.map(shape_dtype, after) == jax.tree.map(shape_dtype, initial)
  assert metrics['loss'].shape == () and metrics['loss'].dtype == np.float32
