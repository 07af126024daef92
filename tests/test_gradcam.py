"""Grad-CAM (Fig. 5) against a NumPy computation on a toy network, and its attention
blocks found in the real networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.experiments import gradcam
from ecam_jax.models.build import build_model, init_variables

from tiny_runs import ROOT


class Scale(nn.Module):
  """A = x * w: the 'attention block', C channels from one."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('w', nn.initializers.normal(1.0), (3,))


class Toy(nn.Module):
  """logits = sum_c v_c A_c^2 / 2, so d(sum logits)/dA_c = v_c A_c."""

  @nn.compact
  def __call__(self, x, train=False):
    a = Scale(name='block')(x)
    v = self.param('v', nn.initializers.normal(1.0), (3,))
    return {'logits': (v * a**2 / 2).sum(-1, keepdims=True)}


def test_gradcam_equals_numpy_on_a_toy_network():
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 1)).astype(np.float32)
  model = Toy()
  variables = model.init(jax.random.key(0), x)
  w = np.asarray(variables['params']['block']['w'])
  v = np.asarray(variables['params']['v'])
  a = x * w  # [2, 5, 5, 3]
  weights = (v * a).mean(axis=(1, 2), keepdims=True)
  cam = np.maximum((weights * a).sum(-1), 0)
  cam = cam / cam.max(axis=(1, 2), keepdims=True)
  got = gradcam.gradcam(model, variables, jnp.asarray(x), ('block',))
  np.testing.assert_allclose(got, cam, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='no module at nope'):
    gradcam.gradcam(model, variables, jnp.asarray(x), ('nope',))


# U-Net + SE and + CBAM share U-Net + CoA's path (the bottleneck).
@pytest.mark.parametrize('variant', ['unet_coa', 'attention_unet', 'danet'])
def test_each_networks_attention_block_is_found(variant):
  config = load_config(ROOT / 'configs/demo.py', f'variant={variant}')
  config.model.base_channels = 4
  if 'resnet_depth' in config.model:
    config.model.resnet_depth = 18
  model = build_model(config.model)
  variables = init_variables(model, 0, 32)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
  maps = gradcam.gradcam(model, variables, images, gradcam.TARGETS[variant])
  assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
