"""The sharded train step equals the single-device step on the global batch (one merged
foreground, and several classes on a padded batch); BatchNorm statistics are the global
batch's; non-finite steps leave the state unchanged."""

import chex
import jax
import numpy as np

from ecam_jax import classes, parallel

import numpy_ref as ref
import step_equivalence as se

SIZE, BATCH, LR = 32, 8, se.LR


def _config(**augment):
  config = se.config(base_channels=4)
  config.augment.update(augment)
  return config


def _batches(n, seed=0):
  return se.batches(_config(), n, seed)


_initial_state, _run = se.initial_state, se.run


def test_eight_devices_equal_one_device_over_three_steps():
  """The full model with the paper's augmentation (keys depend on the global row only).
  The sharded run recomputes each level in the backward pass (model.remat: the EC
  encoder, the decoder and the side head), which must not change the result either."""
  history, _ = se.assert_sharded_equals_single(
    _config(), devices=8, num_steps=3, sharded_model={'remat': True}
  )
  assert len(history) == 3


def test_batchnorm_statistics_are_the_global_batch():
  config = _config(flip_prob=0.0, rotate_degrees=0.0, blur_prob=0.0)
  config.model.update(
    use_ec=False, use_cc=False, use_sc=False, use_mus=False, use_dws=False, attention='none'
  )
  batch = _batches(1, seed=3)[0]
  batch['image'][:4] += 1.0  # devices see different local statistics
  initial = _initial_state(config)
  state, _ = _run(config, 8, [batch], initial)
  kernel = np.asarray(initial.params['encoder1']['conv0']['Conv_0']['kernel'])
  conv = ref.conv2d(batch['image'], kernel)
  global_mean = conv.mean(axis=(0, 1, 2))
  local_mean = conv[:1].mean(axis=(0, 1, 2))
  got = np.asarray(state.batch_stats['encoder1']['conv0']['BatchNorm_0']['mean'])
  chex.assert_trees_all_close(got, 0.1 * global_mean, rtol=1e-4, atol=1e-6)
  assert np.abs(0.1 * local_mean - got).max() > 1e-3
  got_var = np.asarray(state.batch_stats['encoder1']['conv0']['BatchNorm_0']['var'])
  chex.assert_trees_all_close(got_var, 0.9 + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4)


def test_nonfinite_step_is_skipped_and_recorded():
  config = _config()
  config.model.update(use_ec=False, use_cc=False, use_sc=False, use_mus=False, attention='none')
  good, bad = _batches(2)
  bad['image'][0] = np.nan  # a whole slice: the rotation cannot sample around it
  initial = _initial_state(config)
  state_after_good, _ = _run(config, 4, [good], initial)
  state, history = _run(config, 4, [good, bad], initial)
  assert not history[1]['finite'] and history[0]['finite']
  assert int(state.step) == 2 and int(state.skipped) == 1 and int(state.first_nonfinite) == 1
  chex.assert_trees_all_equal(state.params, state_after_good.params)
  chex.assert_trees_all_equal(state.opt_state, state_after_good.opt_state)


def _padded(batch, rows):
  """`batch` padded with zero rows to `rows`, the padding marked invalid."""
  extra = rows - len(batch['image'])
  out = {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
  out['valid'] = np.arange(rows) < len(batch['image'])
  return out


def test_a_batch_that_does_not_split_over_the_devices_is_padded_and_trains_as_one():
  """Global batch 4 on 3 devices (padded to 6) equals batch 4 on 1 device over two steps,
  with the paper's augmentation and two classes and a region (K = 3 logits: per-class
  soft Dice, cross-entropy, side cross-entropy, per-item counts): padding rows count in
  neither the loss, the BatchNorm statistics nor the counts. The U-Net with its side head
  but without the blocks that act within an image only (EC, CC, SC, MuS, attention): rows
  meet only in BatchNorm and the reductions, which it has; the full model's sharded step
  is test_eight_devices_equal_one_device_over_three_steps'. (A device that holds only
  padding: test_masked_batch_statistics_equal_numpy, and test_train's batch smaller than
  the device count.)"""
  config = _config()
  config.model.update(use_ec=False, use_cc=False, use_sc=False, use_mus=False, attention='none')
  config.data.merge_foreground = False
  config.data.classes, config.data.regions = 'organ:1,tumour:2', 'both:1+2'
  config.data.label_values = (0, 1, 2)
  classes.resolve(config, {})
  config.train.batch_size = 4
  batches = [{k: v[:4] for k, v in b.items()} for b in se.batches(config, 2, seed=5)]
  assert {0, 1, 2} <= set(np.unique(batches[0]['label']))
  initial = _initial_state(config)
  one, hist_one = _run(config, 1, batches, initial)
  assert parallel.fit_batch(4, parallel.data_mesh(jax.devices()[:3])) == 6
  state, hist = _run(config, 3, [_padded(b, 6) for b in batches], initial)
  for key in ('loss', 'dice', 'ce', 'side_ce', 'grad_norm'):
    chex.assert_trees_all_close(
      [h[key] for h in hist], [h[key] for h in hist_one], rtol=1e-5, atol=1e-7
    )
  assert hist_one[0]['counts'].shape == (3, 3) and hist_one[0]['counts'][1].sum() > 0
  chex.assert_trees_all_equal([h['counts'] for h in hist], [h['counts'] for h in hist_one])
  chex.assert_trees_all_close(state.batch_stats, one.batch_stats, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(state.params, one.params, atol=0.1 * LR, rtol=0)


def test_masked_batch_statistics_equal_numpy():
  """models/norm.py: mean and variance over the real rows only, summed over devices that
  hold different numbers of them (one holds none)."""
  from jax.sharding import PartitionSpec as P

  from ecam_jax.models.norm import batch_statistics

  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (6, 5, 4, 3)).astype(np.float32)
  valid = np.array([True, True, True, True, False, False])
  mesh = parallel.data_mesh(jax.devices()[:3])
  stats = jax.jit(
    jax.shard_map(
      lambda a, m: batch_statistics(a, parallel.AXIS, m),
      mesh=mesh,
      in_specs=(P(parallel.AXIS), P(parallel.AXIS)),
      out_specs=P(),
    )
  )
  mean, var = stats(x, valid)
  real = x[valid].astype(np.float64)
  chex.assert_trees_all_close(np.asarray(mean), real.mean(axis=(0, 1, 2)), rtol=1e-5)
  chex.assert_trees_all_close(np.asarray(var), real.var(axis=(0, 1, 2)), rtol=1e-4)
