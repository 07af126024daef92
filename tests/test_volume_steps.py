"""The device's share of segmenting a volume (volume_steps.py) against the host's: linear
resizing against scipy's zoom, normalization on the device against the host's, and a
whole volume segmented on the device (Predictor.segment_case) against the host pipeline
that an export's deployment follows (volumes.preprocess_arrays, the model,
label_maps.label_map): the same label map, for one and several channels, one logit and
several classes, on one device and on several."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from ecam_jax import infer, label_maps, parallel
from ecam_jax.configuration import load_config
from ecam_jax.data import normalization, volumes
from ecam_jax.data.linear_resize import resize_linear
from ecam_jax.models.build import build_model, init_variables

import nifti_fixtures as fx

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  ('shape', 'size'), [((512, 512), (256, 256)), ((37, 53), (64, 20)), ((5, 7), (5, 13))]
)
def test_linear_resize_equals_scipy_zoom_on_host_and_device(shape, size):
  x = np.random.default_rng(0).random((3, *shape, 2), dtype=np.float32)
  expected = np.stack(
    [
      scipy.ndimage.zoom(
        x[..., c],
        (1, size[0] / shape[0], size[1] / shape[1]),
        order=1,
        mode='nearest',
        grid_mode=True,
      )
      for c in range(2)
    ],
    axis=-1,
  )
  host = resize_linear(x, size)
  device = jax.jit(lambda a: resize_linear(a, size))(x)
  assert host.shape == device.shape == expected.shape
  np.testing.assert_allclose(host, expected, rtol=0, atol=3e-7)
  np.testing.assert_allclose(np.asarray(device), expected, rtol=0, atol=3e-7)
  assert resize_linear(x, shape) is x  # already the size: untouched


def test_each_normalization_applies_alike_on_the_device():
  data = fx.config().data
  data.channels = ('CT', 'MR', 'noNorm', 'Rescale_to_0_1', 'rgb_to_0_1')
  x = np.random.default_rng(1).normal(80, 400, (4, 9, 9)).astype(np.int16)
  for c in range(len(data.channels)):
    numbers = normalization.normalization(x, data, c)
    on_device = jax.jit(lambda a, n: normalization.Normalization(*n).apply(a.astype(jnp.float32)))
    out = on_device(x, jnp.asarray(numbers, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), normalization.normalize(x, data, c), atol=2e-6)


def _config(channels: tuple[str, ...], classes: int):
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  config.model.base_channels = 4
  config.data.image_size = 32
  config.data.channels = channels
  config.model.in_channels = len(channels)
  config.model.num_classes = classes
  config.eval.batch_size = 4
  if classes > 1:
    config.data.merge_foreground = False
    config.data.classes = 'organ:5,tumour:2'
    config.eval.keep_components = 1
  return config


@pytest.mark.parametrize(
  ('channels', 'classes', 'devices'), [(('CT',), 1, 1), (('CT', 'T2'), 3, 1), (('CT', 'T2'), 3, 3)]
)
def test_a_volume_on_the_device_equals_the_host_pipeline(channels, classes, devices):
  # 11 slices in batches of 4 (6 on 3 devices): the last batch partial; 40x36 in-plane,
  # resized to 32 and back; an LPS affine, so the slices are reoriented.
  config = _config(channels, classes)
  variables = jax.device_get(init_variables(build_model(config.model), 0, 32))
  rng = np.random.default_rng(2)
  arrays = [rng.normal(40, 120, (40, 36, 11)).astype(np.int16) for _ in channels]
  mesh = parallel.data_mesh(jax.devices()[:devices])
  predictor = infer.Predictor(config, None, variables=variables, mesh=mesh)

  slices, record = volumes.preprocess_arrays(arrays, fx.LPS, config.data)
  prob = predictor.probabilities(slices)
  if classes == 1:  # an untrained model: a threshold that splits its voxels
    predictor.decision.threshold = float(np.median(prob))
  labels = predictor.segment_arrays(arrays, fx.LPS)
  expected = label_maps.label_map(prob, record, predictor.decision, predictor.label_values)
  assert labels.shape == arrays[0].shape and labels.dtype == expected.dtype
  np.testing.assert_array_equal(labels, expected)
  # neither empty nor full, every class present: the comparison can fail
  assert 0.05 < (labels > 0).mean() < 0.95
  assert set(np.unique(labels)) == ({0, 1} if classes == 1 else {0, 2, 5})
