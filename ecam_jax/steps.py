"""The jitted steps: a per-device function under `jax.shard_map` over the data axis.

Train: augment on the device, forward with BatchNorm statistics synchronized over
AXIS, the loss as a global quantity (psum/pmean inside `losses`), its gradient taken
directly: inside shard_map the gradient of a replicated parameter already comes out
reduced over devices, so it is NOT reduced again (docs/architecture.md, "Data flow and
parallelism"). A step whose loss or gradient is not finite leaves the state unchanged and
is recorded.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ecam_jax import classes, losses, metrics, parallel
from ecam_jax.data import augment, nnunet_augment
from ecam_jax.models import dropout
from ecam_jax.models.norm import real_rows
from ecam_jax.parallel import AXIS
from ecam_jax.state import TrainState

Batch = dict[str, jax.Array]

# Folded into the run key for the dropout stream, apart from augmentation's per-step keys.
_DROPOUT_STREAM = 0x64726F70


def example_keys(base: jax.Array, step: jax.Array, local_batch: int) -> jax.Array:
  """One key per example from (run key, step, global row), whatever the device count.

  Called inside the per-device step: row = device index * local batch + i.
  """
  return dropout.row_keys(jax.random.fold_in(base, step), local_batch, AXIS)


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def augmenter(aug: ml_collections.ConfigDict) -> Callable:
  """(keys, images, labels) -> augmented, by config.augment.pipeline: the paper's flips,
  rotations and blur (data/augment.py) or nnU-Net's 2-D augmentation
  (data/nnunet_augment.py, its own probabilities and ranges)."""
  if aug.pipeline == 'nnunet':
    return nnunet_augment.augment_batch
  return lambda keys, images, labels: augment.augment_batch(keys, images, labels, aug)


def make_train_step(
  model: Any,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
  mesh: Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """(state, batch{'image' [B,S,S,1] f32, 'label' [B,S,S,1] u8, 'valid' [B] bool}) ->
  (state, metrics).

  B is config.train.batch_size rounded up to the device count (parallel.fit_batch); the
  rows past the global batch are padding ('valid' False) and count nowhere: not in the
  loss, not in BatchNorm's statistics (models/norm.py), not in the metrics. So a batch of
  4 on 3 or 8 devices trains as on one. Without padding the step ignores 'valid'.
  """
  threshold = config.eval.threshold
  augment_batch = augmenter(config.augment)
  members = classes.membership(config)
  padded = parallel.fit_batch(config.train.batch_size, mesh, 'config.train.batch_size')
  masked = padded != config.train.batch_size

  def per_device(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    images, labels = batch['image'], batch['label']
    rows = batch['valid'] if masked else None
    keys = example_keys(state.key, state.step, images.shape[0])
    # The same key on every device: models/dropout.py folds in each row's global index.
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT_STREAM), state.step)
    images, labels = augment_batch(keys, images, labels)
    labels = labels.astype(jnp.float32)

    def loss_fn(params):
      with real_rows(rows):
        outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats},
          images,
          train=True,
          mutable=['batch_stats'],
          rngs={dropout.RNG: dropout_key},
        )
      loss, parts = losses.total_loss(outputs, labels, config.loss, AXIS, rows)
      return loss, (updates.get('batch_stats', {}), parts, outputs['logits'])

    (loss, (batch_stats, parts, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      first_nonfinite=jnp.where(
        (state.first_nonfinite < 0) & ~finite, state.step, state.first_nonfinite
      ),
    )
    # TP, FP, FN of each scored item summed over the global batch: the host sums them over
    # its log window and makes the DSCs once (never an average of per-batch ratios).
    counts = metrics.slice_counts(logits, labels, threshold, members)
    if masked:
      counts = counts * rows[:, None, None]
    counts = lax.psum(jnp.sum(counts, axis=0), AXIS)
    out = {
      'loss': loss,
      **parts,
      'counts': counts,
      'grad_norm': optax.tree.norm(grads),
      'lr': schedule(state.step),
      'finite': finite,
    }
    return new_state, out

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


def make_eval_step(
  model: Any,
  mesh: Mesh,
  threshold: float = 0.5,
  members: np.ndarray | None = None,
  class_weights: tuple[float, ...] | None = None,
) -> Callable[[dict, Batch], dict[str, jax.Array]]:
  """(variables, batch) -> per slice (batch-sharded): 'counts' int32 [B, C, 3] (TP, FP, FN
  of each scored item, `metrics.slice_counts`) and 'loss_sums', from which the host makes
  the scores and the validation loss of the whole split: for one logit float32 [B, 4] (sum
  of p * y, of p, of y, and of the pixels' BCE; p = sigmoid(logits)); for K + 1 logits
  [B, 3K + 2] (per foreground class sums of p_k * y_k, of p_k, of y_k (p = softmax, y one-hot),
  then of w * CE and of w, w the pixel's class weight)."""

  def per_device(variables: dict, batch: Batch) -> dict[str, jax.Array]:
    logits = model.apply(variables, batch['image'], train=False)['logits']
    counts = metrics.slice_counts(logits, batch['label'], threshold, members)
    if logits.shape[-1] == 1:
      labels = batch['label'].astype(jnp.float32)
      p = jax.nn.sigmoid(logits)
      bce = optax.sigmoid_binary_cross_entropy(logits, labels)
      sums = [jnp.sum(x, axis=(1, 2, 3)) for x in (p * labels, p, labels, bce)]
      return {'counts': counts, 'loss_sums': jnp.stack(sums, axis=-1)}
    index = batch['label'].astype(jnp.int32)
    p = jax.nn.softmax(logits, axis=-1)[..., 1:]
    y = jax.nn.one_hot(index[..., 0], logits.shape[-1], dtype=jnp.float32)[..., 1:]
    ce = losses.pixel_cross_entropy(logits, index)[..., 0]
    w = jnp.ones_like(ce)
    if class_weights is not None:
      w = jnp.asarray(class_weights, jnp.float32)[index[..., 0]]
    per_class = [jnp.sum(x, axis=(1, 2)) for x in (p * y, p, y)]
    pixel = [jnp.sum(x, axis=(1, 2))[:, None] for x in (w * ce, w)]
    return {'counts': counts, 'loss_sums': jnp.concatenate(per_class + pixel, axis=-1)}

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
  return jax.jit(sharded)


def make_predict_step(
  model: Any, mesh: Mesh, tta_flip: bool = False
) -> Callable[[dict, jax.Array], jax.Array]:
  """(variables, images [B,S,S,1]) -> probabilities (batch-sharded): of the foreground
  [B,S,S] for one logit, of each class [B,S,S,K+1] (softmax) for K + 1; with `tta_flip`,
  the mean of the image's and its horizontal mirror's probabilities."""

  def probabilities(variables: dict, images: jax.Array) -> jax.Array:
    logits = model.apply(variables, images, train=False)['logits']
    if logits.shape[-1] == 1:
      return jax.nn.sigmoid(logits[..., 0])
    return jax.nn.softmax(logits, axis=-1)

  def per_device(variables: dict, images: jax.Array) -> jax.Array:
    prob = probabilities(variables, images)
    if tta_flip:
      prob = 0.5 * (prob + probabilities(variables, images[:, :, ::-1])[:, :, ::-1])
    return prob

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
  return jax.jit(sharded)
