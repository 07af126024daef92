"""UNet++ (ecam_jax/models/baselines/unetpp.py): the reference's parameter counts, the
node wiring and the whole forward pass against a graph written here in NumPy, the
upsampling, the sharded step, prediction geometry, remat and a non-square input."""

import pathlib

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ecam_jax import infer
from ecam_jax.configuration import load_config
from ecam_jax.models import abstract_variables, build_model

import numpy_ref as ref
import step_equivalence as se

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The nodes X(i, j) of a depth-5 UNet++: level i = 0..4, column j = 0..4 - i.
NODES = [(i, j) for i in range(5) for j in range(5 - i)]


def _config(base=4, size=32, **model):
  config = load_config(ROOT / 'configs/default.py', 'variant=unetpp')
  config.model.base_channels = base
  config.model.update(model)
  config.data.image_size = size
  return config


def _params(config, size=32):
  return abstract_variables(build_model(config.model), size)['params']


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# --- parameter counts ------------------------------------------------------------------


@pytest.mark.parametrize(('deep_supervision', 'expected'), [(False, 9_159_105), (True, 9_159_204)])
def test_parameter_count_at_512_is_the_reference_count_without_conv_bias(
  deep_supervision, expected
):
  """4uiiurz1's NestedUNet (1 channel in, 1 logit, widths 32-512) has 9,162,753 parameters
  with one head and 9,162,852 with four (counted from its code). This project drops the
  bias of every conv followed by BatchNorm (30 convs: 2 per node, 15 nodes; 3,648 biases),
  so the counts are 9,159,105 and 9,159,105 + 3 side heads of (32 + 1) = 9,159,204."""
  config = load_config(ROOT / 'configs/default.py', 'variant=unetpp')
  assert config.model.base_channels == 32 and config.model.deep_supervision  # the row's defaults
  config.model.deep_supervision = deep_supervision
  params = _params(config, 512)
  assert _count(params) == expected
  heads = {k for k in params if not k.startswith('x')}
  assert heads == ({'head', 'side1', 'side2', 'side3'} if deep_supervision else {'head'})


def _inputs_of(i: int, j: int) -> list[tuple[str, int, int]]:
  """The graph of Zhou et al. / 4uiiurz1, written out: what reaches X(i, j), as
  (how, level, column) of the source node ('image' for the network's input)."""
  if j == 0:
    return [('image', -1, -1)] if i == 0 else [('pool', i - 1, 0)]
  return [('same', i, k) for k in range(j)] + [('up', i + 1, j - 1)]


def test_node_wiring_from_the_input_widths_of_every_node():
  """Every node's first conv reads as many channels as the graph above delivers (widths
  f_i = b 2^i from a table here), and there is no node outside the graph."""
  b = 3  # odd widths: j f_i + f_{i+1} cannot be matched by accident as easily
  widths = {i: b * 2**i for i in range(5)}
  widths[-1] = 1  # the image
  params = _params(_config(base=b, deep_supervision=False))
  assert {k for k in params if k.startswith('x')} == {f'x{i}_{j}' for i, j in NODES}
  for i, j in NODES:
    expected_in = sum(widths[level] for _, level, _ in _inputs_of(i, j))
    kernel0 = params[f'x{i}_{j}']['conv0']['Conv_0']['kernel']
    kernel1 = params[f'x{i}_{j}']['conv1']['Conv_0']['kernel']
    assert kernel0.shape == (3, 3, expected_in, widths[i]), (i, j)
    assert kernel1.shape == (3, 3, widths[i], widths[i]), (i, j)
    if j:
      assert expected_in == j * widths[i] + widths[i + 1]
  assert params['head']['kernel'].shape == (1, 1, b, 1)


# --- the forward pass against NumPy ---------------------------------------------------


def _up(x, align_corners):
  return ref.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners)


def _maxpool(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _numpy_unetpp(image, params, align_corners):
  """The network in float64 NumPy (train-mode BatchNorm), node by node from _inputs_of."""
  nodes = {}
  for i, j in sorted(NODES, key=lambda n: (n[0] + n[1], -n[0])):  # sources before targets
    parts = []
    for how, level, col in _inputs_of(i, j):
      if how == 'image':
        parts.append(np.asarray(image, np.float64))
      elif how == 'pool':
        parts.append(_maxpool(nodes[level, col]))
      elif how == 'same':
        parts.append(nodes[level, col])
      else:
        parts.append(_up(nodes[level, col], align_corners))
    x = np.concatenate(parts, -1)
    p = params[f'x{i}_{j}']
    nodes[i, j] = ref.conv_unit(ref.conv_unit(x, p['conv0']), p['conv1'])

  def head(j, name):
    return ref.conv2d(nodes[0, j], params[name]['kernel'], bias=params[name]['bias'])

  return head(4, 'head'), [head(j, f'side{j}') for j in (1, 2, 3)]


@pytest.mark.parametrize('align_corners', [True, False])
def test_forward_pass_equals_the_numpy_graph(align_corners):
  """Random parameters (BN scales and shifts too), training mode: logits from X(0, 4) and
  the side logits from X(0, 1..3), in that order, as the NumPy graph computes them."""
  config = _config(base=2, unetpp_align_corners=align_corners)
  model = build_model(config.model)
  variables = ref.randomize(abstract_variables(model, 32))
  image = np.random.default_rng(1).standard_normal((2, 32, 32, 1)).astype(np.float32)
  out, _ = model.apply(variables, image, train=True, mutable=['batch_stats'])
  logits, sides = _numpy_unetpp(image, variables['params'], align_corners)
  assert out['logits'].dtype == jnp.float32 and len(out['side_logits']) == 3
  np.testing.assert_allclose(out['logits'], logits, atol=2e-4, rtol=2e-4)
  for got, want in zip(out['side_logits'], sides, strict=True):
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


def test_without_deep_supervision_there_are_no_side_outputs():
  config = _config(base=2, deep_supervision=False)
  model = build_model(config.model)
  variables = ref.host_variables(abstract_variables(model, 32))
  out = model.apply(variables, np.ones((1, 32, 32, 1), np.float32))
  assert out['side_logits'] == () and out['logits'].shape == (1, 32, 32, 1)


# --- contract: sharded step, prediction, remat, shapes --------------------------------


def test_sharded_train_step_equals_one_device():
  """The sharded run recomputes its blocks in the backward pass (model.remat): remat
  must not change the result either, so this one comparison checks both."""
  se.assert_sharded_equals_single(
    se.config('unetpp', size=32, base_channels=4), devices=8, sharded_model={'remat': True}
  )


def test_predict_writes_a_mask_with_the_inputs_geometry(tmp_path):
  """Host-made weights, a volume stored A, I, L and tilted off the axes: the mask file has
  the input's shape and affine, uint8."""
  config = load_config(ROOT / 'configs/demo.py', 'variant=unetpp')
  config.model.base_channels = 4
  config.data.image_size = 32
  config.eval.batch_size = 4
  variables = ref.host_variables(abstract_variables(build_model(config.model), 32))
  tilt = np.eye(4)
  tilt[:3, :3] = Rotation.from_euler('xz', [12, 6], degrees=True).as_matrix()
  affine = np.array([[0, 0, -0.9, 40], [-0.8, 0, 0, 30], [0, -2.5, 0, 10], [0, 0, 0, 1]])
  affine = tilt @ affine
  assert nib.aff2axcodes(affine) not in (('R', 'A', 'S'), ('L', 'P', 'S'))
  volume = np.random.default_rng(0).uniform(-200, 300, (30, 6, 26)).astype(np.float32)
  source, target = tmp_path / 'oblique.nii.gz', tmp_path / 'out' / 'mask.nii.gz'
  nib.save(nib.Nifti1Image(volume, affine), source)
  target.parent.mkdir()
  predictor = infer.Predictor(config, None, variables=variables)
  predictor.segment_file(source, target)
  written = nib.load(target)
  assert written.shape == volume.shape and written.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(written.affine, nib.load(source).affine)
  assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1}


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_non_square_input_and_bfloat16(dtype):
  config = _config(base=2, dtype=dtype)
  model = build_model(config.model)
  variables = ref.host_variables(abstract_variables(model, 32))
  out = model.apply(variables, np.ones((2, 64, 96, 1), np.float32))
  for logits in (out['logits'], *out['side_logits']):
    assert logits.shape == (2, 64, 96, 1) and logits.dtype == jnp.float32
  assert len(out['side_logits']) == 3


def test_sides_not_dividing_16_are_refused():
  model = build_model(_config(base=2).model)
  with pytest.raises(ValueError, match='multiples of 16'):
    model.init(jax.random.key(0), np.zeros((1, 40, 32, 1), np.float32))


def test_selected_by_model_name_alone_it_predicts_unfolded():
  """`--config.model.name=unetpp` without the variant keeps the U-Net's switches (use_ec
  on) in the config; prediction must not try to fold EC blocks the network lacks."""
  config = load_config(ROOT / 'configs/demo.py')
  config.model.name = 'unetpp'
  config.model.base_channels = 4
  config.data.image_size = 32
  assert config.model.use_ec
  variables = ref.host_variables(abstract_variables(build_model(config.model), 32))
  predictor = infer.Predictor(config, None, variables=variables)
  assert not predictor.folded
  volume = np.random.default_rng(1).uniform(-200, 300, (20, 20, 3)).astype(np.float32)
  mask = predictor.segment_array(volume, np.eye(4))
  assert mask.shape == volume.shape and mask.dtype == np.uint8
