"""On-device confusion counts at a probability threshold, against counts made by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax import metrics

# One 2x3 slice: probabilities and the label; logits = log(p / (1 - p)).
PROB = np.array([[0.1, 0.3, 0.55], [0.7, 0.85, 0.95]])
LABEL = np.array([[0, 1, 1], [0, 1, 0]])


def _counts(threshold: float) -> np.ndarray:
  logits = jnp.asarray(np.log(PROB / (1 - PROB))[None, ..., None], jnp.float32)
  labels = jnp.asarray(LABEL[None, ..., None], jnp.uint8)
  count = jax.jit(lambda x, y: metrics.slice_counts(x, y, threshold))
  return np.asarray(count(logits, labels))[0, 0]  # one slice, one scored item


# Predicted foreground: p > threshold. By hand from PROB and LABEL above:
#   0.5 -> {0.55, 0.7, 0.85, 0.95}: TP 0.55, 0.85; FP 0.7, 0.95; FN 0.3.
#   0.8 -> {0.85, 0.95}: TP 0.85; FP 0.95; FN 0.3, 0.55.
#   0.2 -> all but 0.1: TP 0.3, 0.55, 0.85; FP 0.7, 0.95; FN none.
@pytest.mark.parametrize(
  ('threshold', 'expected'), [(0.5, (2, 2, 1)), (0.8, (1, 1, 2)), (0.2, (3, 2, 0))]
)
def test_slice_counts_at_a_threshold(threshold, expected):
  counts = _counts(threshold)
  assert counts.dtype == np.int32
  np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize('threshold', [0.0, 1.0, 1.5])
def test_a_threshold_outside_0_1_is_refused(threshold):
  with pytest.raises(ValueError, match='threshold'):
    _counts(threshold)


# Several classes: output indices 0 (background), 1 (A), 2 (B), 3 (C); items A, B, C and
# the region A+B. Two 2x4 slices; the prediction is the argmax of one-hot logits.
PRED = np.array([[[0, 1, 1, 2], [0, 0, 2, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
TRUTH = np.array([[[0, 1, 0, 0], [1, 0, 0, 0]], [[0, 0, 0, 0], [0, 2, 0, 0]]])
MEMBERS = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]], bool)
# By hand, (TP, FP, FN) per slice and item:
#   slice 0: A predicted at (0,1), (0,2), labelled at (0,1), (1,0): 1, 1, 1;
#            B predicted at (0,3), (1,2), never labelled (absent from the label): 0, 2, 0;
#            C neither predicted nor labelled: 0, 0, 0; A+B: 1, 3, 1.
#   slice 1: nothing predicted; B labelled at (1,1) (absent from the prediction): 0, 0, 1.
EXPECTED = [
  [[1, 1, 1], [0, 2, 0], [0, 0, 0], [1, 3, 1]],
  [[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 1]],
]


def test_slice_counts_per_class_and_region():
  logits = jax.nn.one_hot(PRED, 4) * 5.0 - 1.0
  labels = jnp.asarray(TRUTH[..., None], jnp.uint8)
  counts = jax.jit(lambda x, y: metrics.slice_counts(x, y, members=MEMBERS))(logits, labels)
  assert counts.shape == (2, 4, 3) and counts.dtype == np.int32
  np.testing.assert_array_equal(counts, EXPECTED)
