"""The optimizers of the recipes (ecam_jax/recipes.py).

The paper's: Adam, cosine decay to 0 over the run, weight decay as PyTorch's Adam adds it
(L2 in the gradient) or decoupled (AdamW), optional warmup and gradient clipping.
nnU-Net's: SGD with Nesterov momentum 0.99, PyTorch's L2 weight decay, and the polynomial
decay lr * (1 - epoch / epochs) ** 0.9, stepped once per epoch as nnU-Net steps it;
gradients clipped to a global norm of 12 before the weight decay is added (nnU-Net clips
the loss's gradients, and torch.optim.SGD adds the decay inside its step).
"""

import jax.numpy as jnp
import ml_collections
import optax


def _poly(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  epochs = int(config.epochs)
  steps_per_epoch = max(total_steps // epochs, 1)

  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, epochs)
    return config.lr * (1.0 - epoch / epochs) ** config.poly_exponent

  return schedule


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """config.train -> step -> learning rate: 'cosine' (to 0 at `total_steps`), 'poly' (per
  epoch, total_steps spanning config.epochs) or 'constant', after a linear warmup if set."""
  warmup = int(config.warmup_steps)
  if config.schedule == 'constant':
    main = optax.constant_schedule(config.lr)
  elif config.schedule == 'poly':
    main = _poly(config, max(total_steps - warmup, 1))
  else:
    main = optax.cosine_decay_schedule(config.lr, max(total_steps - warmup, 1), alpha=0.0)
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, config.lr, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(
  config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """config.train -> (the gradient transformation, its learning-rate schedule)."""
  schedule = learning_rate_schedule(config, total_steps)
  sgd = config.get('optimizer', 'adam') == 'sgd'
  decoupled = config.decoupled_weight_decay  # after the optimizer: AdamW, or SGDW
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0 and not decoupled:
    chain.append(optax.add_decayed_weights(config.weight_decay))  # PyTorch: g + wd * p
  if sgd:  # torch.optim.SGD: buf = m * buf + g; step g + m * buf (Nesterov) or buf
    chain.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
  else:
    chain.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
  if config.weight_decay > 0 and decoupled:
    chain.append(optax.add_decayed_weights(config.weight_decay))
  chain.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*chain), schedule
