"""The check every network's tests make: the sharded train step on several devices equals
the single-device step on the same global batch (loss, gradient norm, counts, parameters,
BatchNorm statistics). Weights are made on the host (no init compile)."""

import chex
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ecam_jax import parallel, steps
from ecam_jax.configuration import load_config
from ecam_jax.models import dropout
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.optim import make_optimizer
from ecam_jax.state import TrainState

import numpy_ref as ref

LR = 1e-3


def config(variant: str = 'ec_cam_unet', size: int = 32, batch: int = 8, **model):
  """configs/default.py with `variant`, `size` x `size` slices, global batch `batch` and
  `model` overrides (e.g. a small base_channels)."""
  c = load_config('configs/default.py', f'variant={variant}')
  c.model.update(model)
  c.data.image_size = size
  c.train.batch_size = batch
  c.train.lr = LR
  # Adam divides by sqrt(v): a gradient that is ~0 up to rounding (its sign set by the order
  # of a sum) would become a full-size step. eps keeps such gradients from being amplified,
  # so the comparison tests the distributed computation, not rounding.
  c.train.adam_eps = 1e-4
  return c


def batches(config, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  b, s = config.train.batch_size, config.data.image_size
  out = []
  for _ in range(n):
    image = rng.random((b, s, s, 1), dtype=np.float32)
    # One foreground, or the class indices 1..K - 1 (K logits) in bands of intensity.
    edges = np.linspace(0.6, 1.0, max(1, config.model.num_classes - 1), endpoint=False)
    out.append({'image': image, 'label': np.digitize(image, edges).astype(np.uint8)})
  return out


def initial_state(config) -> TrainState:
  """The state before step 0, made on the host; each run puts it on its mesh."""
  model = build_model(config.model)
  variables = ref.host_variables(abstract_variables(model, config.data.image_size), config.seed)
  tx, _ = make_optimizer(config.train, 100)
  return TrainState(
    step=np.zeros((), np.int32),
    params=variables['params'],
    batch_stats=variables.get('batch_stats', {}),
    opt_state=jax.device_get(tx.init(variables['params'])),
    rng=np.asarray(jax.random.key_data(jax.random.key(config.seed))),
    skipped=np.zeros((), np.int32),
    first_nonfinite=np.full((), -1, np.int32),
  )


def run(config, devices: int, data: list[dict], initial: TrainState):
  """(final state, per-step metrics) of the train step on the first `devices` devices."""
  mesh = parallel.data_mesh(jax.devices()[:devices])
  model = build_model(config.model, axis_name=parallel.AXIS)
  tx, schedule = make_optimizer(config.train, 100)
  state = jax.device_put(initial, parallel.replicated(mesh))
  step = steps.make_train_step(model, tx, schedule, config, mesh)
  history = []
  for batch in data:
    state, metrics = step(state, parallel.global_batch(mesh, batch))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def assert_sharded_equals_single(
  config, devices: int = 8, num_steps: int = 2, sharded_model: dict | None = None
):
  """`num_steps` steps on `devices` devices against 1 device; returns both histories.

  sharded_model: config.model settings for the sharded run only, ones that must not change
  what is computed (remat: {'remat': True}), so that one comparison checks them too: a
  network's remat check then costs no compile of its own.
  """
  data, initial = batches(config, num_steps), initial_state(config)
  one, hist_one = run(config, 1, data, initial)
  sharded = config
  if sharded_model:
    sharded = config.copy_and_resolve_references()
    sharded.model.update(sharded_model)
  many, hist_many = run(sharded, devices, data, initial)
  assert all(np.isfinite(h['grad_norm']) and h['grad_norm'] > 0 for h in hist_one + hist_many)
  # The first step sees identical parameters: a gradient reduced twice over the devices
  # (docs/architecture.md) would be `devices` times larger here.
  chex.assert_trees_all_close(hist_many[0]['loss'], hist_one[0]['loss'], rtol=1e-6)
  chex.assert_trees_all_close(hist_many[0]['grad_norm'], hist_one[0]['grad_norm'], rtol=1e-5)
  for key in ('loss', 'grad_norm'):
    chex.assert_trees_all_close(
      [h[key] for h in hist_many], [h[key] for h in hist_one], rtol=1e-4, atol=1e-6
    )
  chex.assert_trees_all_equal(hist_many[0]['counts'], hist_one[0]['counts'])
  # After a few Adam steps of size ~LR, rounding has moved a few weights by a few percent
  # of one step (ReLU and max-pool boundaries); a real difference moves them by whole steps.
  chex.assert_trees_all_close(many.params, one.params, atol=0.1 * LR, rtol=0)
  chex.assert_trees_all_close(many.batch_stats, one.batch_stats, atol=1e-5, rtol=1e-4)
  diffs = [
    np.abs(a - b).ravel()
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params), strict=True)
  ]
  assert np.concatenate(diffs).mean() < 1e-3 * LR
  return hist_one, hist_many


def assert_one_step_equal(config, devices: int = 8, sharded_model: dict | None = None):
  """One train step on `devices` devices against 1, with bounds that hold for every
  registered network in float32 (tests/test_networks.py) and still fail on any
  synchronization bug. sharded_model: as in assert_sharded_equals_single.

  Deep batch-normalized networks round differently when BatchNorm's sums run over 1 or 8
  devices: measured up to ~1e-5 of the logits and ~1e-4 of the gradient norm (Attention
  U-Net, 34 normalized layers on a path; the same comparison in float64 agrees to 1e-14).
  A BatchNorm with per-device statistics moves the loss by percents, and a gradient reduced
  twice over the devices is `devices` times larger: both far outside these bounds.
  """
  data, initial = batches(config, 1), initial_state(config)
  one, (h_one,) = run(config, 1, data, initial)
  sharded = config
  if sharded_model:
    sharded = config.copy_and_resolve_references()
    sharded.model.update(sharded_model)
  many, (h_many,) = run(sharded, devices, data, initial)
  assert h_one['grad_norm'] > 0 and np.isfinite(h_many['loss'])
  np.testing.assert_allclose(h_many['loss'], h_one['loss'], rtol=1e-5)
  np.testing.assert_allclose(h_many['grad_norm'], h_one['grad_norm'], rtol=1e-3)
  # TP, FP, FN over the batch's pixels: a few logits at a decision boundary may fall either way.
  assert np.abs(h_many['counts'] - h_one['counts']).max() <= 4, (h_one, h_many)
  chex.assert_trees_all_close(many.batch_stats, one.batch_stats, atol=1e-5, rtol=1e-4)
  # Adam's first step is about +-LR per weight: a weight whose gradient is near zero can go
  # either way (measured: under 1% of the weights move apart by more than 0.1 LR).
  diffs = np.concatenate(
    [
      np.abs(a - b).ravel()
      for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params), strict=True)
    ]
  )
  assert diffs.mean() < 0.02 * LR and (diffs > 0.1 * LR).mean() < 0.03
  assert diffs.max() <= 2.1 * LR
  return h_one, h_many


def train_forward(config, devices: int, images: np.ndarray, variables: dict):
  """(logits, BatchNorm statistics) of the network's training forward pass on the first
  `devices` devices, as the train step runs it: under shard_map over the data axis,
  BatchNorm synchronized through the axis name, one dropout key for every device."""
  mesh = parallel.data_mesh(jax.devices()[:devices])
  model = build_model(config.model, axis_name=parallel.AXIS)
  key = jax.random.key(config.seed)

  def per_device(variables, images):
    out, updates = model.apply(
      variables, images, train=True, mutable=['batch_stats'], rngs={dropout.RNG: key}
    )
    return out['logits'], updates.get('batch_stats', {})

  step = jax.jit(
    jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=(P(parallel.AXIS), P())
    )
  )
  variables = jax.device_put(variables, parallel.replicated(mesh))
  return jax.device_get(step(variables, parallel.global_batch(mesh, {'image': images})['image']))


def assert_forward_equal(config, devices: int = 8) -> None:
  """The network's part of the sharded train step: its training forward pass on `devices`
  devices equals one device's, logits and BatchNorm statistics (a BatchNorm with
  per-device statistics moves both by percents). The step around it (the loss as a global
  quantity, the gradient reduced once) is the same for every network: tests/test_steps.py
  checks it, and test_networks' slow test checks the whole step for each network."""
  model = build_model(config.model)
  variables = ref.host_variables(abstract_variables(model, config.data.image_size), config.seed)
  images = batches(config, 1)[0]['image']
  logits_one, stats_one = train_forward(config, 1, images, variables)
  logits_many, stats_many = train_forward(config, devices, images, variables)
  assert jax.tree.leaves(stats_one) or not jax.tree.leaves(variables.get('batch_stats', {}))
  # Sums over 1 or 8 devices round differently: measured up to 1e-4 of the logits' scale
  # (HRNet's deep normalized paths), where per-device statistics move them by percents.
  scale = float(np.abs(logits_one).max())
  np.testing.assert_allclose(logits_many, logits_one, rtol=0, atol=1e-3 * scale)
  chex.assert_trees_all_close(stats_many, stats_one, atol=1e-5, rtol=1e-4)
