"""Adam with PyTorch's L2 weight decay (or AdamW), cosine to 0, warmup, clipping."""

import chex
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ecam_jax.optim import learning_rate_schedule, make_optimizer


def _config(**kwargs):
  c = ml_collections.ConfigDict(
    dict(
      lr=1e-2,
      schedule='cosine',
      warmup_steps=0,
      weight_decay=1e-1,
      decoupled_weight_decay=False,
      grad_clip_norm=0.0,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
    )
  )
  c.update(kwargs)
  return c


def _numpy_adam(params, grads, config, total):
  """PyTorch's torch.optim.Adam / AdamW, written out, with the cosine learning rate."""
  p, m, v = params.copy(), np.zeros_like(params), np.zeros_like(params)
  b1, b2, eps, wd = config.adam_b1, config.adam_b2, config.adam_eps, config.weight_decay
  for t, g in enumerate(grads, start=1):
    lr = config.lr * 0.5 * (1 + np.cos(np.pi * (t - 1) / total))
    if not config.decoupled_weight_decay:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    update = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    if config.decoupled_weight_decay:
      update = update + wd * p
    p = p - lr * update
  return p


def _run(config, total=10, steps=4):
  rng = np.random.default_rng(0)
  params = rng.standard_normal(5)
  grads = [rng.standard_normal(5) for _ in range(steps)]
  tx, _ = make_optimizer(config, total)
  p = jnp.asarray(params, jnp.float32)
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
    p = optax.apply_updates(p, updates)
  return np.asarray(p), _numpy_adam(params, grads, config, total)


def test_adam_with_l2_in_the_gradient_is_pytorchs():
  got, expected = _run(_config())
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_is_adamw():
  got, expected = _run(_config(decoupled_weight_decay=True))
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
  l2, _ = _run(_config())
  assert np.abs(got - l2).max() > 1e-4


def test_cosine_reaches_zero_and_warmup_ramps():
  schedule = learning_rate_schedule(_config(), 100)
  chex.assert_trees_all_close(float(schedule(0)), 1e-2, rtol=1e-6)
  assert abs(float(schedule(100))) < 1e-12
  chex.assert_trees_all_close(float(schedule(50)), 0.5e-2, rtol=1e-5)
  warm = learning_rate_schedule(_config(warmup_steps=10), 110)
  chex.assert_trees_all_close(float(warm(5)), 0.5e-2, rtol=1e-5)
  chex.assert_trees_all_close(float(warm(10)), 1e-2, rtol=1e-5)
  assert abs(float(warm(110))) < 1e-12


def _apply(tx, params, grads):
  state, p = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  return np.asarray(p)


def test_clipping_scales_the_gradient_to_the_global_norm():
  """Gradients of very different sizes: with clipping at norm 1 the run equals NumPy Adam on
  g * min(1, 1 / |g|); without it, it does not (Adam's first step alone is about sign(g)
  either way, so several steps are needed to tell)."""
  grads = [np.array([300.0, 400.0, 0.0]), np.array([0.3, -0.4, 1.2]), np.array([6.0, 0.0, 8.0])]
  clipped = [g * min(1.0, 1.0 / np.linalg.norm(g)) for g in grads]
  config = _config(grad_clip_norm=1.0, weight_decay=0.0)
  params = np.array([0.5, -0.2, 0.1])
  tx, _ = make_optimizer(config, len(grads))
  got = _apply(tx, jnp.asarray(params), [jnp.asarray(g) for g in grads])
  want = _numpy_adam(params, clipped, config, len(grads))
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
  unclipped = _numpy_adam(params, grads, config, len(grads))
  assert np.abs(unclipped - want).max() > 1e-3  # the test can tell clipping from none


def _numpy_nnunet_sgd(params, grads, config, steps_per_epoch):
  """nnU-Net's step, written out: clip the gradient to global norm 12, torch.optim.SGD with
  weight decay and Nesterov momentum, lr poly-decayed per epoch."""
  p, buf = params.copy(), np.zeros_like(params)
  for t, g in enumerate(grads):
    epoch = t // steps_per_epoch
    lr = config.lr * (1 - epoch / config.epochs) ** 0.9
    norm = np.sqrt((g * g).sum())
    g = g * min(1.0, config.grad_clip_norm / norm)
    g = g + config.weight_decay * p
    buf = config.momentum * buf + g
    p = p - lr * (g + config.momentum * buf)
  return p


def test_sgd_nesterov_with_poly_per_epoch_is_nnunets():
  config = _config(
    optimizer='sgd',
    momentum=0.99,
    nesterov=True,
    schedule='poly',
    poly_exponent=0.9,
    epochs=3,
    weight_decay=3e-5,
    grad_clip_norm=1.0,  # the test's gradients have norms ~2: clipping acts
  )
  rng = np.random.default_rng(1)
  params = rng.standard_normal(5)
  grads = [rng.standard_normal(5) for _ in range(6)]
  tx, schedule = make_optimizer(config, 6)  # 3 epochs of 2 steps
  assert [float(schedule(s)) for s in (0, 1, 2, 5)] == pytest.approx(
    [1e-2, 1e-2, 1e-2 * (2 / 3) ** 0.9, 1e-2 * (1 / 3) ** 0.9]
  )
  p = jnp.asarray(params, jnp.float32)
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
    p = optax.apply_updates(p, updates)
  expected = _numpy_nnunet_sgd(params, grads, config, steps_per_epoch=2)
  chex.assert_trees_all_close(np.asarray(p), expected, rtol=1e-5, atol=1e-6)
