"""The loss of docs/model.md (eq. 11-13, 17): soft Dice over the whole batch, BCE from
logits, BCE on each side output; and its multi-class form (K + 1 logits, softmax): the
soft Dice of each foreground class over the whole batch, averaged, cross-entropy in place
of BCE, on the main and the side outputs alike.

Every term is a global quantity over the data-parallel batch: with `axis_name`, Dice's
sums and BCE's sums and counts are reduced over that axis inside the per-device step, so
the loss (and its gradient) equals the single-device loss on the global batch. Rows that
only pad the batch to a multiple of the device count (`rows` False) count nowhere.

A side output may be smaller than the labels (nnU-Net's deep supervision: each decoder
stage's head at its own resolution); it is compared with the labels resized to its size by
nearest neighbour, as nnU-Net resizes its targets (`labels_at`).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax


def _sum(x: jax.Array, axis_name: str | None, keep_last: bool = False) -> jax.Array:
  """The sum over every element (or, `keep_last`, over all axes but the last) of the
  global batch."""
  total = jnp.sum(x, axis=tuple(range(x.ndim - 1))) if keep_last else jnp.sum(x)
  return lax.psum(total, axis_name) if axis_name else total


def _row_weights(x: jax.Array, rows: jax.Array | None) -> jax.Array:
  """1 for a pixel of a real row, 0 for one of a padding row, shaped to broadcast with x."""
  if rows is None:
    return jnp.ones((), jnp.float32)
  return rows.astype(jnp.float32).reshape(-1, *([1] * (x.ndim - 1)))


def dice_loss(
  logits: jax.Array,
  labels: jax.Array,
  smooth: float = 1.0,
  axis_name: str | None = None,
  rows: jax.Array | None = None,
) -> jax.Array:
  """1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth), p = sigmoid(logits),
  sums over every pixel of the (global) batch (eq. 11); `rows` [B] bool leaves padding
  rows out."""
  w = _row_weights(logits, rows)
  p = jax.nn.sigmoid(logits.astype(jnp.float32)) * w
  y = labels.astype(jnp.float32) * w
  intersection = _sum(p * y, axis_name)
  total = _sum(p, axis_name) + _sum(y, axis_name)
  return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def _weighted_mean(
  values: jax.Array,
  labels: jax.Array,
  axis_name: str | None,
  rows: jax.Array | None,
  class_weights: tuple[float, ...] | None,
) -> jax.Array:
  """sum(w * values) / sum(w) over the global batch, w = the pixel's row weight times
  class_weights[its label] (PyTorch's weighted cross-entropy mean); [B, H, W, 1] shapes."""
  w = jnp.broadcast_to(_row_weights(values, rows), values.shape)
  if class_weights is not None:
    w = w * jnp.asarray(class_weights, jnp.float32)[labels.astype(jnp.int32)]
  return _sum(values * w, axis_name) / _sum(w, axis_name)


def bce_loss(
  logits: jax.Array,
  labels: jax.Array,
  axis_name: str | None = None,
  rows: jax.Array | None = None,
  class_weights: tuple[float, float] | None = None,
) -> jax.Array:
  """Mean binary cross-entropy from logits over every pixel of the (global) batch
  (eq. 12); `rows` [B] bool leaves padding rows out of the sum and the count;
  `class_weights` (background, foreground) weigh each pixel by its label."""
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
  return _weighted_mean(bce, labels, axis_name, rows, class_weights)


def softmax_dice_loss(
  logits: jax.Array,
  labels: jax.Array,
  smooth: float = 1.0,
  axis_name: str | None = None,
  rows: jax.Array | None = None,
  class_weights: tuple[float, ...] | None = None,
) -> jax.Array:
  """logits [B, H, W, K + 1], labels [B, H, W, 1] class indices: for each foreground
  class k, 1 - (2 sum(p_k y_k) + smooth) / (sum(p_k) + sum(y_k) + smooth), p = softmax,
  sums over every pixel of the (global) batch; the mean over k = 1..K, weighted by
  class_weights[1:] when given."""
  classes = logits.shape[-1]
  w = _row_weights(logits, rows)
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * w
  y = jax.nn.one_hot(labels[..., 0].astype(jnp.int32), classes, dtype=jnp.float32) * w
  intersection = _sum(p * y, axis_name, keep_last=True)[1:]
  total = _sum(p, axis_name, keep_last=True)[1:] + _sum(y, axis_name, keep_last=True)[1:]
  per_class = 1.0 - (2.0 * intersection + smooth) / (total + smooth)
  weights = jnp.ones(classes - 1) if class_weights is None else jnp.asarray(class_weights[1:])
  return jnp.sum(per_class * weights) / jnp.sum(weights)


def cross_entropy_loss(
  logits: jax.Array,
  labels: jax.Array,
  axis_name: str | None = None,
  rows: jax.Array | None = None,
  class_weights: tuple[float, ...] | None = None,
) -> jax.Array:
  """Mean softmax cross-entropy over every pixel of the (global) batch; logits
  [B, H, W, K + 1], labels [B, H, W, 1] class indices; `class_weights` weigh each pixel
  by its label (a weighted mean)."""
  ce = pixel_cross_entropy(logits, labels)
  return _weighted_mean(ce, labels, axis_name, rows, class_weights)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label] of each pixel: [B, H, W, K + 1] logits and [B, H, W, 1]
  class indices -> [B, H, W, 1] (the training loss's and the eval step's)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, labels.astype(jnp.int32), axis=-1)


def _nearest_exact(n_in: int, n_out: int) -> np.ndarray | slice:
  """The input index each of `n_out` outputs reads, min(floor((i + 0.5) n_in / n_out),
  n_in - 1): PyTorch's interpolate(mode='nearest-exact'), here in exact integer arithmetic.
  A slice when n_out divides n_in (factor f: every f-th pixel from f // 2)."""
  if n_in % n_out == 0:
    f = n_in // n_out
    return slice(f // 2, None, f)
  return np.minimum(((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out), n_in - 1)


def labels_at(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
  """labels [B, H, W, 1] resized to `size` (h, w) by nearest neighbour, as nnU-Net resizes
  its targets for deep supervision (batchgeneratorsv2 DownsampleSegForDSTransform: torch's
  interpolate, mode 'nearest-exact'): output pixel (i, j) reads label (floor((i + 0.5) H /
  h), floor((j + 0.5) W / w)), so halving takes the odd rows and columns (1, 3, 5, ...).
  The labels themselves at their own size."""
  height, width = labels.shape[1:3]
  if (height, width) == tuple(size):
    return labels
  labels = labels[:, _nearest_exact(height, size[0])]
  return labels[:, :, _nearest_exact(width, size[1])]


def deep_supervision_weights(outputs: int) -> tuple[float, ...]:
  """nnU-Net's weights of its outputs, from full resolution down: 1 / 2**i, the last (the
  lowest resolution) 0, normalized to sum 1 (nnUNetTrainer._build_loss)."""
  raw = [1 / 2**i for i in range(outputs)]
  raw[-1] = 0.0
  return tuple(w / sum(raw) for w in raw)


def loss_weights(config: ml_collections.ConfigDict) -> tuple[float, float, float]:
  """(w_dice, w_bce, w_side); eq. 17's alpha, when set, gives w_dice = alpha and
  w_bce = 1 - alpha."""
  if config.alpha is not None:
    return float(config.alpha), 1.0 - float(config.alpha), float(config.w_side)
  return float(config.w_dice), float(config.w_bce), float(config.w_side)


def total_loss(
  outputs: dict,
  labels: jax.Array,
  config: ml_collections.ConfigDict,
  axis_name: str | None = None,
  rows: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """w_dice Dice(main) + w_bce BCE(main) + w_side mean_k BCE(side_k) and its parts; with
  K + 1 > 1 logits, the per-class soft Dice mean and cross-entropy ('ce', 'side_ce') in
  their places (w_bce weighs the cross-entropy). With config.deep_supervision 'nnunet' and
  side outputs, nnU-Net's instead: sum_i weight_i (w_dice Dice_i + w_bce BCE_i) over the
  main output (i = 0) and the sides in the order the network lists them (nnunet2d: finest
  first), the weights `deep_supervision_weights` (the last output's 0; w_side unused).

  outputs: the model's {'logits': [B, H, W, K], 'side_logits': ([B, h, w, K], ...)}, each
  side at full size (h, w = H, W) or smaller, compared with `labels_at` its size;
  labels: [B, H, W, 1] in {0, 1} (K = 1) or class indices; rows: [B] bool, False for
  padding rows (None: all real).
  """
  w_dice, w_bce, w_side = loss_weights(config)
  weights = None if config.class_weights is None else tuple(map(float, config.class_weights))
  logits = outputs['logits']
  binary = logits.shape[-1] == 1
  pixel, name = (bce_loss, 'bce') if binary else (cross_entropy_loss, 'ce')

  def dice(out: jax.Array, target: jax.Array) -> jax.Array:
    if binary:
      return dice_loss(out, target, config.dice_smooth, axis_name, rows)
    return softmax_dice_loss(out, target, config.dice_smooth, axis_name, rows, weights)

  parts = {'dice': dice(logits, labels), name: pixel(logits, labels, axis_name, rows, weights)}
  total = w_dice * parts['dice'] + w_bce * parts[name]
  sides = outputs.get('side_logits', ())
  if sides and config.deep_supervision == 'nnunet':
    weighted = deep_supervision_weights(1 + len(sides))
    for weight, side in zip(weighted[1:], sides, strict=True):
      if weight > 0:
        target = labels_at(labels, side.shape[1:3])
        both = w_dice * dice(side, target) + w_bce * pixel(side, target, axis_name, rows, weights)
        total = total + weight / weighted[0] * both
    total = weighted[0] * total  # = sum_i weight_i (w_dice Dice_i + w_bce CE_i)
    parts['deep_supervision'] = total
  elif sides:
    side = sum(
      pixel(s, labels_at(labels, s.shape[1:3]), axis_name, rows, weights) for s in sides
    ) / len(sides)
    parts[f'side_{name}'] = side
    total = total + w_side * side
  return total, parts
