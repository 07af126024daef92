"""export/conv_folding.py: the pass that folds the per-channel affine ops after a Conv
into its weights and bias, on a hand-made ONNX graph run in ONNX Runtime."""

import numpy as np
import pytest

from ecam_jax.export import conv_folding, onnx_model

pytest.importorskip('jax2onnx', reason=f'the export dependencies: {onnx_model.INSTALL}')
onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')


def test_fold_into_convs_on_a_hand_made_graph():
  """Conv -> Sub -> Mul -> Add, and Conv -> Transpose -> Div -> Add (NHWC constants), fold;
  c - x, and a conv output the graph returns, do not; equal weights shared by two convs
  stay as they are for each."""
  from onnx import TensorProto, helper, numpy_helper

  rng = np.random.default_rng(5)

  def const(name, shape):
    return numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(np.float32), name)

  def value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

  def run(m):
    return ort.InferenceSession(m.SerializeToString()).run(None, {'x': x})

  inits = [
    const('W', (2, 2, 3, 3)),
    const('c1', (1, 2, 1, 1)),
    const('c2', (2, 1, 1)),
    const('c3', (1, 2, 1, 1)),
    const('c4', (2,)),
    const('c5', (1, 1, 1, 2)),
    const('c6', (1, 2, 1, 1)),
  ]
  nodes = [
    helper.make_node('Conv', ['x', 'W'], ['a0'], pads=[1, 1, 1, 1], name='first'),
    helper.make_node('Sub', ['a0', 'c1'], ['a1']),
    helper.make_node('Mul', ['c2', 'a1'], ['a2']),
    helper.make_node('Add', ['a2', 'c3'], ['a3']),
    helper.make_node('Relu', ['a3'], ['a4']),
    helper.make_node('Conv', ['a4', 'W'], ['b0'], pads=[1, 1, 1, 1], name='second'),
    helper.make_node('Transpose', ['b0'], ['b1'], perm=[0, 2, 3, 1]),
    helper.make_node('Div', ['b1', 'c4'], ['b2']),
    helper.make_node('Add', ['b2', 'c5'], ['y']),
    helper.make_node('Conv', ['x', 'W'], ['d0'], pads=[1, 1, 1, 1], name='third'),
    helper.make_node('Sub', ['c6', 'd0'], ['z']),  # c - x: not an affine op of the conv's
    helper.make_node('Conv', ['x', 'W'], ['e0'], pads=[1, 1, 1, 1], name='fourth'),
    helper.make_node('Mul', ['e0', 'c6'], ['e1']),
  ]
  outputs = [value('y', [None, 5, 5, 2]), *(value(n, [None, 2, 5, 5]) for n in ('z', 'e0', 'e1'))]
  graph = helper.make_graph(nodes, 'g', [value('x', [None, 2, 5, 5])], outputs, inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', onnx_model.OPSET)])
  assert conv_folding.unfolded(model) == ['first', 'second']
  folded, count = conv_folding.fold_into_convs(model)
  assert count == 2 and conv_folding.unfolded(folded) == []
  onnx.checker.check_model(folded)
  ops = [n.op_type for n in folded.graph.node]
  assert ops == ['Conv', 'Relu', 'Conv', 'Transpose', 'Conv', 'Sub', 'Conv', 'Mul']
  x = rng.normal(size=(3, 2, 5, 5)).astype(np.float32)
  for got, want in zip(run(folded), run(model), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
