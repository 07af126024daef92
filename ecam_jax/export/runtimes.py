"""Running an export's artifacts, each behind the same function: float32 images
[B, S, S, C] (NHWC, the network's layout) -> logits [B, S, S, K] as NumPy.

Neither needs the model code: ONNX Runtime reads model.onnx (NCHW at its boundary, turned
here), and JAX alone reads model.stablehlo.
"""

import pathlib
from collections.abc import Callable

import jax
import numpy as np

from ecam_jax.export import onnx_model

Run = Callable[[np.ndarray], np.ndarray]


def onnx_runtime(path: str | pathlib.Path, providers: list[str] | None = None) -> Run:
  """model.onnx (or its float16 variant) in ONNX Runtime; by default its CPU provider."""
  ort = onnx_model.require('onnxruntime')
  options = ort.SessionOptions()
  options.log_severity_level = onnx_model.ORT_LOG_ERRORS
  providers = providers or ['CPUExecutionProvider']
  session = ort.InferenceSession(str(path), options, providers=providers)

  def run(images: np.ndarray) -> np.ndarray:
    nchw = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
    (logits,) = session.run([onnx_model.OUTPUT], {onnx_model.INPUT: nchw})
    return logits.transpose(0, 2, 3, 1)

  return run


def stablehlo_runtime(path: str | pathlib.Path) -> Run:
  """model.stablehlo in JAX, on JAX's default device (one compile per batch size)."""
  exported = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))
  call = jax.jit(exported.call)
  return lambda images: np.asarray(call(np.asarray(images, np.float32)))
