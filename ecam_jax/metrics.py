"""Confusion counts on the device: TP, FP, FN per slice and scored item (the one merged
foreground, or each class and region: `ecam_jax.classes`). Every ratio is made from them on
the host, once, by `ecam_jax.scoring` (counts summed over devices, hosts, slices or log
steps first; never averaged ratios)."""

import math

import jax
import jax.numpy as jnp
import numpy as np


def predicted_index(logits: jax.Array, threshold: float = 0.5) -> jax.Array:
  """[B, H, W, K] logits -> int32 [B, H, W] output index: for K = 1, 1 where the
  probability sigmoid(logit) is > `threshold` (config.eval.threshold, strictly between 0
  and 1; computed as logit > log(t / (1 - t)), no sigmoid evaluated); for K > 1 the argmax."""
  if logits.shape[-1] > 1:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if not 0 < threshold < 1:
    raise ValueError(f'threshold={threshold!r}; expected a probability strictly between 0 and 1')
  return (logits[..., 0] > math.log(threshold / (1 - threshold))).astype(jnp.int32)


def slice_counts(
  logits: jax.Array,
  labels: jax.Array,
  threshold: float = 0.5,
  members: np.ndarray | None = None,
) -> jax.Array:
  """[B, H, W, K] logits and [B, H, W, 1] labels (output indices: {0, 1} for K = 1) ->
  int32 [B, C, 3]: TP, FP, FN of each slice for each scored item c, whose output indices
  are members[c] (bool [C, K + 1], `classes.membership`; None: the binary [[0, 1]])."""
  if members is None:
    members = np.array([[False, True]])
  members = jnp.asarray(members)
  pred = members[:, predicted_index(logits, threshold)]  # [C, B, H, W]
  label = members[:, labels[..., 0].astype(jnp.int32)]
  axes = (2, 3)
  tp = jnp.sum(pred & label, axes)
  fp = jnp.sum(pred & ~label, axes)
  fn = jnp.sum(~pred & label, axes)
  return jnp.stack([tp, fp, fn], axis=-1).transpose(1, 0, 2).astype(jnp.int32)
