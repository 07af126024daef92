"""Confusion counts on the device: TP, FP, FN per slice, from which every ratio is made
once on the host (summed over devices, hosts and slices first; never averaged ratios)."""

import jax
import jax.numpy as jnp


def slice_counts(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[B, H, W, 1] logits and {0, 1} labels -> int32 [B, 3]: TP, FP, FN of each slice.

  A pixel is predicted foreground where its logit is > 0 (probability > 0.5).
  """
  pred = logits[..., 0] > 0
  label = labels[..., 0] > 0
  axes = (1, 2)
  tp = jnp.sum(pred & label, axes)
  fp = jnp.sum(pred & ~label, axes)
  fn = jnp.sum(~pred & label, axes)
  return jnp.stack([tp, fp, fn], axis=-1).astype(jnp.int32)


def dice_from_counts(counts: jax.Array) -> jax.Array:
  """DSC = 2TP / (2TP + FP + FN) of summed counts [..., 3] (eq. 16); 1 when all are 0."""
  tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
  denominator = 2 * tp + fp + fn
  return jnp.where(denominator > 0, 2 * tp / jnp.maximum(denominator, 1), 1.0)
