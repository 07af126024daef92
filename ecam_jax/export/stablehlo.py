"""model.stablehlo: the inference network as a serialized `jax.export.Exported`.

StableHLO with the trained variables inside as constants, lowered for CPU, CUDA, ROCm and
TPU at once, with a symbolic batch dimension: JAX alone runs it, on any of them, without
this package (the module's code is not needed to read it):

  exported = jax.export.deserialize(bytearray(open('model.stablehlo', 'rb').read()))
  logits = exported.call(images)  # float32 [B, S, S, C] (NHWC) -> [B, S, S, K]

JAX promises to read serialized modules of an older JAX for at least six months (its
export compatibility guarantee); re-export after upgrading past that.
"""

import jax
import jax.numpy as jnp

from ecam_jax.export.network import Network

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
BATCH = 'batch'


def serialize(network: Network) -> bytes:
  """The network's logits, exported for every platform of PLATFORMS."""
  (batch,) = jax.export.symbolic_shape(BATCH)
  s = network.image_size
  spec = jax.ShapeDtypeStruct((batch, s, s, network.in_channels), jnp.float32)
  exported = jax.export.export(jax.jit(network.logits), platforms=PLATFORMS)(spec)
  return bytes(exported.serialize())
