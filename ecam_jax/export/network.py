"""The network an export holds: a trained model's logits as a function of a batch of
preprocessed slices alone, its variables constants of that function.

Inference needs less than training, and both artifacts are cut to it:
- EC blocks are folded into single 3x3 convs (`fold_ec`, as `infer.Predictor` does);
- the side heads (DWS, the compared networks' deep supervision: each network's
  `TRAINING_ONLY` options) are not built: they feed
  training losses, never the logits, so leaving them out changes no logit. Their
  parameters stay in the variables, unread. (Their bilinear resize with a dynamic batch
  also does not convert to ONNX with jax2onnx 0.17.1.)
"""

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from ecam_jax import checkpoint, parallel
from ecam_jax.models import registry
from ecam_jax.models.build import abstract_variables, build_model, has_ec_blocks
from ecam_jax.models.layers import fold_ec


@dataclasses.dataclass(frozen=True)
class Network:
  """images float32 [B, S, S, C] (NHWC, preprocessed slices) -> logits float32 [B, S, S, K]."""

  model: Any  # the flax module, built for inference
  variables: dict  # NumPy arrays: EC folded where the network has EC blocks
  image_size: int
  in_channels: int
  num_classes: int
  ec_folded: bool

  def logits(self, images: jax.Array) -> jax.Array:
    return self.model.apply(self.variables, images, train=False)['logits']


def inference_settings(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.model with the outputs only training reads switched off (each network's options
  say which values do that: `Options.TRAINING_ONLY`)."""
  settings = ml_collections.ConfigDict(model_config.to_dict())
  settings.update(dict(registry.options_of(model_config).TRAINING_ONLY))
  return settings


def from_variables(config: ml_collections.ConfigDict, variables: dict) -> Network:
  """The inference network of `config` with trained (unfolded) `variables`."""
  folded = has_ec_blocks(config.model)
  if folded:
    variables = jax.jit(lambda v: fold_ec(v, config.model.bn_epsilon))(variables)
  return Network(
    model=build_model(inference_settings(config.model), folded=folded),
    variables=jax.tree.map(np.asarray, jax.device_get(variables)),
    image_size=int(config.data.image_size),
    in_channels=int(config.model.in_channels),
    num_classes=int(config.model.num_classes),
    ec_folded=folded,
  )


def restore(config: ml_collections.ConfigDict, workdir: str, which: str) -> tuple[Network, dict]:
  """(network, checkpoint metadata) of checkpoint `which` ('best', 'latest' or a path)."""
  mesh = parallel.data_mesh(jax.local_devices()[:1])
  abstract = abstract_variables(build_model(config.model), config.data.image_size)
  target = parallel.abstract(abstract, parallel.replicated(mesh))
  variables, meta = checkpoint.restore_variables(workdir, which, target)
  return from_variables(config, variables), meta
