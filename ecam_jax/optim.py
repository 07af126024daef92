"""The optimizer of the paper's recipe: Adam, cosine decay to 0 over the run, weight
decay as PyTorch's Adam adds it (L2 in the gradient) or decoupled (AdamW), optional
warmup and gradient clipping."""

import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """config.train -> step -> learning rate (cosine to 0 at `total_steps`)."""
  warmup = int(config.warmup_steps)
  if config.schedule == 'constant':
    main = optax.constant_schedule(config.lr)
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
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0 and not config.decoupled_weight_decay:
    chain.append(optax.add_decayed_weights(config.weight_decay))  # PyTorch Adam: g + wd * p
  chain.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
  if config.weight_decay > 0 and config.decoupled_weight_decay:
    chain.append(optax.add_decayed_weights(config.weight_decay))  # AdamW
  chain.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*chain), schedule
