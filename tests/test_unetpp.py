"""UNet++ (ecam_jax/models/baselines/unetpp.py): the reference's parameter counts, the
node wiring and the whole forward pass against a graph written here in NumPy, with both
upsamplings and without deep supervision (the contract every network keeps:
tests/test_networks.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.build import abstract_variables, build_model

import numpy_ref as ref

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
  assert config.model.base_channels == 32 and config.model.deep_supervision  # the reference's
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
  config = _config(base=2, align_corners=align_corners)
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
