"""HRNet: its parameter counts against the reference code's, the stage, module and block
plan of both sizes, one fuse layer across three resolutions against NumPy, the sharded
step, prediction geometry, remat, non-square inputs, bfloat16 and the refused sizes.
Training on the phantom demo (slow) is in tests/test_compared_networks.py."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models import abstract_variables, build_model
from ecam_jax.models.baselines.hrnet import Fuse, HighResolutionModule
from ecam_jax.models.baselines.resnet import Bottleneck
from ecam_jax.models.layers import make_norm

import nifti_fixtures as nf
import numpy_ref as ref
import step_equivalence as se


def _config(base=2, size=32, hrnet_size='small_v2', config_file='configs/default.py', **model):
  config = load_config(config_file, 'variant=hrnet')
  config.model.update(base_channels=base, hrnet_size=hrnet_size, **model)
  config.data.image_size = size
  return config


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter counts and structure -------------------------------------------------------


@pytest.mark.parametrize(
  ('base', 'hrnet_size', 'expected'),
  [(48, 'full', 65_844_529), (18, 'full', 9_634_819), (18, 'small_v2', 3_933_279)],
)
def test_reference_configurations_have_the_reference_counts_without_the_head_bias(
  base, hrnet_size, expected
):
  """seg_hrnet.py's HighResolutionNet with a 1-channel stem and 1 class has 65,845,249
  (W48), 9,635,089 (W18) and 3,933,549 (W18-Small-v2) parameters; the project drops the
  bias of last_layer's 1x1 conv, which a BatchNorm follows: 15 C = 720 or 270 fewer."""
  config = load_config('configs/default.py', 'variant=hrnet')
  assert (config.model.base_channels, config.model.hrnet_size) == (48, 'full')  # the variant
  config.model.update(base_channels=base, hrnet_size=hrnet_size)
  params = abstract_variables(build_model(config.model), 512)['params']
  assert _count(params) == expected
  c = 15 * base
  assert params['head_conv']['kernel'].shape == (1, 1, c, c) and 'bias' not in params['head_conv']
  assert _count(params['classifier']) == c + 1


@pytest.mark.parametrize(
  ('hrnet_size', 'bottlenecks', 'modules', 'blocks'),
  [('full', 4, (1, 4, 3), 4), ('small_v2', 2, (1, 3, 2), 2)],
)
def test_stages_modules_and_blocks_follow_the_tables(hrnet_size, bottlenecks, modules, blocks):
  """HRNetV2: stage 1 of 4 Bottlenecks, stages 2/3/4 of 1/4/3 modules with 4 BasicBlocks
  per branch; W18-Small-v2: 2 Bottlenecks, 1/3/2 modules, 2 BasicBlocks. Every module
  fuses every branch into every other: n (n - 1) / 2 1x1 convs up and sum (i - j) 3x3/2
  convs down."""
  base = 3
  params = abstract_variables(build_model(_config(base, hrnet_size=hrnet_size).model), 32)
  params = params['params']
  assert sorted(k for k in params if k.startswith('layer1_')) == [
    f'layer1_{k}' for k in range(bottlenecks)
  ]
  assert params['layer1_0']['conv3']['kernel'].shape == (1, 1, 64, 256)
  for stage, count in zip((2, 3, 4), modules, strict=True):
    names = sorted(k for k in params if k.startswith(f'stage{stage}_'))
    assert names == [f'stage{stage}_{m}' for m in range(count)]
    for name in names:
      module = params[name]
      assert sorted(k for k in module if k != 'fuse') == sorted(
        f'branch{i}_{k}' for i in range(stage) for k in range(blocks)
      )
      for i in range(stage):
        width = base * 2**i
        assert module[f'branch{i}_0']['conv1']['kernel'].shape == (3, 3, width, width)
      convs = [k for k in module['fuse'] if k.endswith('_conv')]
      down = sum(i - j for i in range(stage) for j in range(i))
      assert len(convs) == stage * (stage - 1) // 2 + down
  # transitions: stage 1's 256 channels -> C (3x3) and 2C (3x3/2); then one new branch each
  assert params['transition1_0_conv']['kernel'].shape == (3, 3, 256, base)
  assert params['transition1_1_conv']['kernel'].shape == (3, 3, 256, 2 * base)
  assert params['transition2_2_conv']['kernel'].shape == (3, 3, 2 * base, 4 * base)
  assert params['transition3_3_conv']['kernel'].shape == (3, 3, 4 * base, 8 * base)
  assert not any(k.startswith(('transition2_0', 'transition2_1', 'transition3_0')) for k in params)


# --- one fuse layer against NumPy ---------------------------------------------------------


def _np_conv_bn(x, p, name, stride):
  """Bias-free conv with PyTorch's padding (k - 1) / 2, then training-mode BatchNorm. A
  stride-2 output pixel o sits on input pixel 2 o: the 'same' conv taken at even pixels."""
  y = ref.conv2d(x, p[f'{name}_conv']['kernel'])[:, ::stride, ::stride]
  return ref.batchnorm_train(y, p[f'{name}_bn']['scale'], p[f'{name}_bn']['bias'])


def _np_fuse(xs, p):
  """y_i = relu(sum_j f_ij(x_j)): f_ii = x_i; j > i: 1x1 conv + BN, bilinear up
  (align_corners=False); j < i: (i - j) 3x3/2 conv + BN, ReLU between them."""
  out = []
  for i, target in enumerate(xs):
    total = 0.0
    for j, source in enumerate(xs):
      y = np.asarray(source, np.float64)
      if j > i:
        y = _np_conv_bn(y, p, f'fuse{i}_{j}', 1)
        y = ref.resize_bilinear(y, target.shape[1:3], align_corners=False)
      for k in range(i - j):
        y = _np_conv_bn(y, p, f'fuse{i}_{j}_{k}', 2)
        y = y if k == i - j - 1 else ref.relu(y)
      total = total + y
    out.append(ref.relu(total))
  return out


def test_fuse_across_three_resolutions_equals_numpy():
  """Branches of 3, 6, 12 channels at 8x4, 4x2, 2x1, every target from every source,
  BatchNorm in training mode."""
  rng = np.random.default_rng(1)
  xs = tuple(
    rng.standard_normal((2, 8 // 2**i, 4 // 2**i, 3 * 2**i)).astype(np.float32) for i in range(3)
  )
  fuse = Fuse(make_norm(None, 0.9, ref.EPS, jnp.float32))
  variables = ref.randomize(jax.eval_shape(lambda: fuse.init(jax.random.key(0), xs, False)), seed=2)
  params = variables['params']
  # 3 targets x 3 sources: 3 up-paths (one conv each), 3 down-paths with 1, 1, 2 convs
  assert len([k for k in params if k.endswith('_conv')]) == 7
  out, _ = jax.jit(lambda v, xs: fuse.apply(v, xs, True, mutable=['batch_stats']))(variables, xs)
  expected = _np_fuse(xs, params)
  for got, want, x in zip(out, expected, xs, strict=True):
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- training and prediction --------------------------------------------------------------


def test_sharded_step_equals_single_device():
  """W2-Small-v2 on 64x64: every part, the coarsest branch at 2x2. One step: at this width
  the second step's gradient norm moves by ~1% when the parameters move by the ~1e-6 that
  rounding puts between the two runs' first updates (measured: from the same parameters,
  1 and 8 devices agree to 1e-6), so a second step would compare the network's
  sensitivity, not the sharding. Adam's eps of 1e-2 keeps the first update of the stem's
  near-zero kernel gradients (sums of BatchNorm's backward, which sums to zero) from
  turning rounding into a sizeable fraction of a step (0.07 LR with the harness's 1e-4)."""
  config = se.config('hrnet', size=64, base_channels=2, hrnet_size='small_v2')
  config.train.adam_eps = 1e-2
  se.assert_sharded_equals_single(config, devices=8, num_steps=1)


def test_predict_writes_a_mask_with_the_input_geometry(tmp_path):
  config = _config(config_file='configs/demo.py')
  config.eval.batch_size = 4
  variables = ref.host_variables(abstract_variables(build_model(config.model), 32))
  nf.assert_prediction_keeps_geometry(config, variables, tmp_path, (5, 40, 36))


# --- contract -----------------------------------------------------------------------------


def test_remat_gives_the_same_outputs_and_gradients_on_non_square_branches():
  """A module of three branches at 8x4, 4x2, 2x1 (a BasicBlock each and the fuse, each
  recomputed under remat) and a stage-1 Bottleneck on 8x4: the same outputs and
  gradients with remat as without. (The whole network compiles too slowly on CPU for a
  second, remat copy; its remat build is traced below.)"""
  rng = np.random.default_rng(7)
  xs = tuple(
    rng.standard_normal((2, 8 // 2**i, 4 // 2**i, 3 * 2**i)).astype(np.float32) for i in range(3)
  )
  norm = make_norm(None, 0.9, ref.EPS, jnp.float32)
  results = []
  for remat in (False, True):
    module = HighResolutionModule(1, norm, remat=remat)
    bottleneck = nn.remat(Bottleneck, static_argnums=(2,)) if remat else Bottleneck
    block = bottleneck(4, norm)
    variables = jax.eval_shape(lambda m=module: m.init(jax.random.key(0), xs, False))
    variables = ref.randomize(variables, seed=8, scale=0.3)
    block_variables = jax.eval_shape(lambda b=block: b.init(jax.random.key(0), xs[0], False))
    block_variables = ref.randomize(block_variables, seed=9, scale=0.3)

    def loss(params, module=module, block=block, variables=variables, bv=block_variables):
      outs, _ = module.apply(
        {'params': params[0], 'batch_stats': variables['batch_stats']},
        xs,
        True,
        mutable=['batch_stats'],
      )
      out, _ = block.apply(
        {'params': params[1], 'batch_stats': bv['batch_stats']}, xs[0], True, mutable=True
      )
      return sum(jnp.mean(y**2) for y in (*outs, out)), (outs, out)

    params = (variables['params'], block_variables['params'])
    (_, outs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    results.append((outs, grads))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_remat_network_has_the_same_variables_and_traces():
  """remat changes no variable, and the train-mode network traces (no compile; tracing its
  gradient too takes ~20 s here, for nothing the module test above does not check)."""
  plain = abstract_variables(build_model(_config().model), 32)
  model = build_model(_config(remat=True).model)
  variables = abstract_variables(model, 32)
  chex.assert_trees_all_equal_shapes_and_dtypes(plain, variables)

  x = jax.ShapeDtypeStruct((2, 64, 32, 1), jnp.float32)
  out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, True, mutable=True), variables, x)
  assert out['logits'].shape == (2, 64, 32, 1)


def test_bfloat16_computes_in_bfloat16_and_returns_float32_logits():
  model = build_model(_config(dtype='bfloat16').model)
  variables = abstract_variables(model, 32)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  x = jax.ShapeDtypeStruct((1, 64, 32, 1), jnp.float32)
  out, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True), variables, x
  )
  assert out['logits'].shape == (1, 64, 32, 1) and out['logits'].dtype == jnp.float32
  assert out['side_logits'] == ()
  inner = state['intermediates']
  fused = inner['stage4_1']['fuse']['__call__'][0]  # the last module's four branches
  assert [y.shape for y in fused] == [(1, 16, 8, 2), (1, 8, 4, 4), (1, 4, 2, 8), (1, 2, 1, 16)]
  assert {y.dtype for y in fused} == {jnp.dtype('bfloat16')}
  assert inner['classifier']['__call__'][0].dtype == jnp.bfloat16


def test_input_sizes_that_do_not_divide_32_are_refused():
  model = build_model(_config().model)
  with pytest.raises(ValueError, match='48x64.*multiples of 32'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 64, 1))))
