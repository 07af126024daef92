"""export/onnx_model.py: the reformulations that let jax2onnx take what it cannot convert
as written equal what they replace."""

import jax
import numpy as np
import pytest

from ecam_jax.export import onnx_model

pytest.importorskip('jax2onnx', reason=f'the export dependencies: {onnx_model.INSTALL}')


def test_converter_workarounds_are_exact():
  """onnx_model's two reformulations equal what they replace, bit for bit (outside the
  converter they wrap flax's own functions)."""
  import flax.linen as nn
  from jax import lax

  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
  zeros = onnx_model._insert_zeros(x, (2, 3))
  reference = lax.pad(x, np.float32(0), [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 0)])
  np.testing.assert_array_equal(zeros, reference)

  pool = lambda: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # noqa: E731
  expected = pool()
  with onnx_model._max_pool_as_the_converter_takes_it():
    np.testing.assert_array_equal(pool(), expected)

  conv = nn.Conv(4, (3, 3), input_dilation=2, padding=((1, 2), (1, 2)))
  params = conv.init(jax.random.key(0), x)
  expected = conv.apply(params, x)
  with onnx_model._input_dilation_as_zeros():
    np.testing.assert_allclose(conv.apply(params, x), expected, rtol=0, atol=1e-6)
  assert conv.input_dilation == 2
