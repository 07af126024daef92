"""The loss of docs/model.md (eq. 11-13, 17): soft Dice over the whole batch, BCE from
logits, BCE on each side output.

Every term is a global quantity over the data-parallel batch: with `axis_name`, Dice's
sums and BCE's sums and counts are reduced over that axis inside the per-device step, so
the loss (and its gradient) equals the single-device loss on the global batch. Rows that
only pad the batch to a multiple of the device count (`rows` False) count nowhere.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax


def _sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  total = jnp.sum(x)
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


def bce_loss(
  logits: jax.Array,
  labels: jax.Array,
  axis_name: str | None = None,
  rows: jax.Array | None = None,
) -> jax.Array:
  """Mean binary cross-entropy from logits over every pixel of the (global) batch
  (eq. 12); `rows` [B] bool leaves padding rows out of the sum and the count."""
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
  w = _row_weights(bce, rows)
  count = jnp.sum(jnp.broadcast_to(w, bce.shape))
  return _sum(bce * w, axis_name) / _sum(count, axis_name)


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
  """w_dice Dice(main) + w_bce BCE(main) + w_side mean_k BCE(side_k) and its parts.

  outputs: the model's {'logits': [B, H, W, 1], 'side_logits': ([B, H, W, 1], ...)};
  labels: [B, H, W, 1] in {0, 1}; rows: [B] bool, False for padding rows (None: all real).
  """
  w_dice, w_bce, w_side = loss_weights(config)
  logits = outputs['logits']
  parts = {
    'dice': dice_loss(logits, labels, config.dice_smooth, axis_name, rows),
    'bce': bce_loss(logits, labels, axis_name, rows),
  }
  total = w_dice * parts['dice'] + w_bce * parts['bce']
  sides = outputs.get('side_logits', ())
  if sides:
    parts['side_bce'] = sum(bce_loss(s, labels, axis_name, rows) for s in sides) / len(sides)
    total = total + w_side * parts['side_bce']
  return total, parts
