"""Folding the per-channel affine ops that follow a convolution into it, in an ONNX graph.

In inference a BatchNorm is y = (x - mean) * s + beta per channel, s = gamma /
sqrt(var + eps) (models/norm.py). After a convolution conv(x, W) + b it is
conv(x, W * s) + (b - mean) * s + beta: one convolution, exact in real arithmetic (the
identity `fold_ec` uses; float32 rounding differs in the last bits). The pass takes any
chain of Sub, Add, Mul or Div by a per-channel constant after a Conv, where nothing else
reads the values in between; Transposes in the chain (the NCHW convolution's output turned
back to the network's NHWC) are kept and followed to where the channel axis goes. The
result is plain ONNX. It runs after ONNX Runtime's constant folding has turned each
BatchNorm's statistics into such constants (onnx_model.optimize).
"""

import numpy as np

_AFFINE = ('Add', 'Sub', 'Mul', 'Div')
_REMOVED = ''  # the op type that marks a folded node until it is dropped


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
  """A constant that broadcasts over a tensor of `rank` dims as one number per index of
  `axis` -> float64 [channels]; None for any other shape."""
  if value.ndim > rank:
    return None
  shape = (1,) * (rank - value.ndim) + value.shape
  if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
    return None
  return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,))


class _Graph:
  """What the pass looks up: constants, each tensor's readers, the graph outputs."""

  def __init__(self, graph):
    from onnx import numpy_helper

    self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    self.readers: dict[str, list] = {}
    for node in graph.node:
      for name in node.input:
        self.readers.setdefault(name, []).append(node)
    self.outputs = {o.name for o in graph.output}

  def only_reader(self, tensor: str):
    readers = self.readers.get(tensor, [])
    return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

  def affine(self, node, tensor: str, rank: int, axis: int, channels: int):
    """(op, per-channel vector) when `node` is tensor (+ - * /) a per-channel constant."""
    if node.op_type not in _AFFINE or len(node.input) != 2 or list(node.input).count(tensor) != 1:
      return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    if other not in self.constants or self.constants[other].dtype != np.float32:
      return None
    if node.op_type in ('Sub', 'Div') and node.input[0] != tensor:  # c - x, c / x
      return None
    vector = _per_channel(self.constants[other], rank, axis, channels)
    return None if vector is None else (node.op_type, vector)


def _chain(g: _Graph, conv):
  """The affine ops after `conv` to fold: [(node, op, vector, node whose output it reads)]."""
  weight = g.constants[conv.input[1]]
  rank, channels, axis = weight.ndim, weight.shape[0], 1
  found, tail = [], conv
  while (node := g.only_reader(tail.output[0])) is not None:
    if node.op_type == 'Transpose':
      perm = [a.ints for a in node.attribute if a.name == 'perm'][0]
      axis, tail = list(perm).index(axis), node
      continue
    affine = g.affine(node, tail.output[0], rank, axis, channels)
    if affine is None:
      break
    found.append((node, *affine, tail))
    tail = node
  return found


def _foldable(g: _Graph, conv) -> bool:
  if conv.op_type != 'Conv' or conv.input[1] not in g.constants:
    return False
  return len(conv.input) < 3 or conv.input[2] in ('', *g.constants)


def fold_into_convs(model):
  """(a copy of `model` with the affine ops folded, number of convolutions changed)."""
  from onnx import numpy_helper

  model = type(model).FromString(model.SerializeToString())
  graph = model.graph
  g = _Graph(graph)
  count = 0
  for conv in list(graph.node):
    if not _foldable(g, conv) or not (chain := _chain(g, conv)):
      continue
    weight = g.constants[conv.input[1]].astype(np.float64)
    has_bias = len(conv.input) > 2 and conv.input[2] != ''
    bias = g.constants[conv.input[2]].astype(np.float64) if has_bias else np.zeros(len(weight))
    took_over = {}  # a removed op's output -> the node that now writes it
    for node, op, v, tail in chain:
      if op == 'Add':
        bias = bias + v
      elif op == 'Sub':
        bias = bias - v
      else:
        factor = v if op == 'Mul' else 1.0 / v
        weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
        bias = bias * factor
      while tail.op_type == _REMOVED:
        tail = took_over[tail.output[0]]
      tail.output[0] = node.output[0]
      took_over[node.output[0]] = tail
      node.op_type = _REMOVED
    count += 1
    # New initializers: ONNX Runtime shares equal constants between convolutions.
    base = conv.name or conv.output[0]
    names = (f'{base}_folded_W', f'{base}_folded_B')
    for name, value in zip(names, (weight, bias), strict=True):
      graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    del conv.input[1:]
    conv.input.extend(names)
  kept = [n for n in graph.node if n.op_type != _REMOVED]
  del graph.node[:]
  graph.node.extend(kept)
  _drop_unused(graph)
  return model, count


def _drop_unused(graph) -> None:
  """Removes initializers and shape annotations of tensors no node reads or writes."""
  used = {name for node in graph.node for name in (*node.input, *node.output)}
  used |= {o.name for o in graph.output}
  keep = [t for t in graph.initializer if t.name in used]
  del graph.initializer[:]
  graph.initializer.extend(keep)
  info = [v for v in graph.value_info if v.name in used]
  del graph.value_info[:]
  graph.value_info.extend(info)


def unfolded(model) -> list[str]:
  """Names of the convolutions still followed by a per-channel constant affine op (none
  after `fold_into_convs`): what the tests check of a shipped model.onnx."""
  g = _Graph(model.graph)
  return [
    conv.name or conv.output[0]
    for conv in model.graph.node
    if _foldable(g, conv) and _chain(g, conv)
  ]
