"""model.onnx: the inference network converted by jax2onnx, then made lean offline.

1. jax2onnx traces `Network.logits` with a symbolic batch dimension and writes an ONNX
   graph (NCHW at the boundary: input 'image' [batch, C, S, S], output 'logits'
   [batch, K, S, S], the layout ONNX tools expect).
2. ONNX Runtime's basic graph optimizations, saved offline: constant folding (each
   BatchNorm's scale and shift become constants), cancelling the NHWC <-> NCHW transposes
   around convolutions, removing redundant nodes. Only standard ONNX operators come out
   (ONNX Runtime documents the basic level as portable; the higher levels are not).
3. `conv_folding.fold_into_convs`: every per-channel constant Sub/Mul/Add/Div that directly
   follows a convolution (BatchNorm in inference) goes into its weights and bias.

Converter workarounds (jax2onnx 0.17.1), applied while tracing only:
- its replacement of `flax.linen.max_pool` takes the window as a keyword and only 'VALID'
  or 'SAME' padding, where ResNet's stem passes them positionally with explicit padding:
  `_max_pool_as_the_converter_takes_it` passes the same pooling as keywords, explicit
  padding as a -inf pad then 'VALID' (the same maximum over the same pixels);
- its replacement of `flax.linen.Conv.__call__` hands a conv with `input_dilation` (CE-Net's
  transposed convs) back to flax, which then fails under its tracer:
  `_input_dilation_as_zeros` inserts the d - 1 zeros between input pixels itself (what
  input dilation means; as a pad of a unit axis after each pixel and a reshape, since ONNX
  Pad has no interior padding) and runs the conv undilated.
"""

import contextlib
import importlib
import logging
import pathlib
import tempfile
from collections.abc import Iterator
from types import ModuleType

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.errors import ConfigError
from ecam_jax.export import conv_folding
from ecam_jax.export.network import Network

INPUT, OUTPUT, BATCH = 'image', 'logits', 'batch'
OPSET = 21  # ONNX Runtime >= 1.20, TensorRT 10 read it
# jax2onnx without its declared dependencies: docs/export.md says why.
INSTALL = "pip install -e '.[export]' && pip install --no-deps 'jax2onnx==0.17.1'"


# ONNX Runtime's log level for the sessions made here: errors only (its warnings about
# initializers it drops from a Loop body say nothing about the model's correctness).
ORT_LOG_ERRORS = 3


def require(name: str) -> ModuleType:
  """Imports an optional export dependency, or says how to install it."""
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise ConfigError(
      f'exporting to ONNX needs the optional package {name!r} ({e}); install the export '
      f'dependencies: {INSTALL} (README, Exporting for deployment)'
    ) from None


def _insert_zeros(x: jax.Array, factors: tuple[int, ...]) -> jax.Array:
  """[B, *spatial, C] -> d - 1 zeros between neighbours along each spatial axis:
  [B, *((n - 1) * d + 1), C], as `lax.conv_general_dilated`'s lhs_dilation dilates."""
  b, *spatial, c = x.shape
  x = x.reshape(b, *(n for size in spatial for n in (size, 1)), c)  # [B, H, 1, W, 1, C]
  x = jnp.pad(x, [(0, 0), *(p for d in factors for p in ((0, 0), (0, d - 1))), (0, 0)])
  x = x.reshape(b, *(n * d for n, d in zip(spatial, factors, strict=True)), c)
  kept = tuple(slice(0, (n - 1) * d + 1) for n, d in zip(spatial, factors, strict=True))
  return x[(slice(None), *kept, slice(None))]


@contextlib.contextmanager
def _input_dilation_as_zeros() -> Iterator[None]:
  current = nn.Conv.__call__  # jax2onnx's replacement while it traces

  def call(module, inputs):
    dilation = module.input_dilation
    spatial = inputs.ndim - 2
    factors = (dilation,) * spatial if isinstance(dilation, int) else tuple(dilation or (1,))
    if all(d == 1 for d in factors):
      return current(module, inputs)
    inputs = _insert_zeros(inputs, factors)
    object.__setattr__(module, 'input_dilation', 1)  # flax modules are frozen dataclasses
    try:
      return current(module, inputs)
    finally:
      object.__setattr__(module, 'input_dilation', dilation)

  nn.Conv.__call__ = call
  try:
    yield
  finally:
    nn.Conv.__call__ = current


@contextlib.contextmanager
def _max_pool_as_the_converter_takes_it() -> Iterator[None]:
  current = nn.max_pool  # jax2onnx's replacement while it traces

  def max_pool(x, window_shape, strides=None, padding='VALID'):
    if not isinstance(padding, str):
      pads = ((0, 0), *(tuple(p) for p in padding), (0, 0))
      x, padding = jnp.pad(x, pads, constant_values=-jnp.inf), 'VALID'
    return current(x, window_shape=tuple(window_shape), strides=strides, padding=padding)

  nn.max_pool = max_pool
  try:
    yield
  finally:
    nn.max_pool = current


def convert(network: Network, name: str = 'ecam_jax'):
  """The network as an onnx.ModelProto, float32, batch dimension 'batch'."""
  jax2onnx = require('jax2onnx')
  onnx = require('onnx')

  def logits(images):
    with _max_pool_as_the_converter_takes_it(), _input_dilation_as_zeros():
      return network.logits(images)

  s = network.image_size
  # jax2onnx logs its settings and optional plugins it skips, onnx_ir every shape tensor
  # of the traced graph it leaves untyped: quiet while converting.
  logs = {
    logging.getLogger('jax2onnx'): logging.WARNING,
    logging.getLogger('onnx_ir'): logging.ERROR,
  }
  levels = {log: log.level for log in logs}
  for log, level in logs.items():
    log.setLevel(level)
  try:
    model = jax2onnx.to_onnx(
      logits,
      inputs=[(BATCH, s, s, network.in_channels)],
      model_name=name,
      opset=OPSET,
      inputs_as_nchw=[0],
      outputs_as_nchw=[0],
      input_names=[INPUT],
      output_names=[OUTPUT],
    )
  finally:
    for log, level in levels.items():
      log.setLevel(level)
  onnx.checker.check_model(model)
  return model


def optimize(model):
  """Steps 2 and 3 of the module docstring: (model, number of convolutions folded into)."""
  onnx, ort = require('onnx'), require('onnxruntime')
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'basic.onnx'
    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_ERRORS
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    optimized = onnx.load(str(path))
  folded, count = conv_folding.fold_into_convs(optimized)
  onnx.checker.check_model(folded)
  return folded, count


def float16(model):
  """The float16 variant: weights and computation in float16, input and output float32
  (ONNX Runtime's own converter; its GPU providers run it natively, its CPU provider
  through float32 kernels where it has no float16 one)."""
  float16_module = require('onnxruntime.transformers.float16')
  return float16_module.convert_float_to_float16(model, keep_io_types=True)
