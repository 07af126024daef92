"""The training state: everything a resumed run needs to continue bit for bit."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ecam_jax.models.build import init_variables


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimizer steps taken (including skipped ones)
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]: raw key data of the run's base key (orbax saves arrays)
  skipped: jax.Array  # int32 []: steps whose loss or gradient was not finite
  first_nonfinite: jax.Array  # int32 []: the first such step, -1 if none

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)

  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, seed: int, image_size: int
) -> TrainState:
  """Initializes parameters from `seed` (one [1, S, S, 1] dummy input) and the optimizer;
  the run's key (augmentation) is derived from the same seed."""
  variables = init_variables(model, seed, image_size)
  run_key = jax.random.fold_in(jax.random.key(seed), 1)
  params = variables['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get('batch_stats', {}),
    opt_state=tx.init(params),
    rng=jax.random.key_data(run_key),
    skipped=jnp.zeros((), jnp.int32),
    first_nonfinite=jnp.full((), -1, jnp.int32),
  )
