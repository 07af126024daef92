"""Confusion counts on the device: TP, FP, FN per slice. Every ratio is made from them on
the host, once, by `ecam_jax.scoring` (counts summed over devices, hosts, slices or log
steps first; never averaged ratios)."""

import math

import jax
import jax.numpy as jnp


def slice_counts(logits: jax.Array, labels: jax.Array, threshold: float = 0.5) -> jax.Array:
  """[B, H, W, 1] logits and {0, 1} labels -> int32 [B, 3]: TP, FP, FN of each slice.

  A pixel is predicted foreground where its probability sigmoid(logit) is > `threshold`
  (config.eval.threshold, strictly between 0 and 1), computed as logit > log(t / (1 - t))
  so that no sigmoid is evaluated.
  """
  if not 0 < threshold < 1:
    raise ValueError(f'threshold={threshold!r}; expected a probability strictly between 0 and 1')
  pred = logits[..., 0] > math.log(threshold / (1 - threshold))
  label = labels[..., 0] > 0
  axes = (1, 2)
  tp = jnp.sum(pred & label, axes)
  fp = jnp.sum(pred & ~label, axes)
  fn = jnp.sum(~pred & label, axes)
  return jnp.stack([tp, fp, fn], axis=-1).astype(jnp.int32)
