"""Validation during training: any device count gives the single-device counts (padding
never counted), the scores follow from the counts, and the validation loss equals an
independent NumPy computation from the model's logits."""

import jax
import numpy as np
import pytest

from ecam_jax import parallel, steps, validate
from ecam_jax.data import cache
from ecam_jax.models.build import build_model, init_variables

import nifti_fixtures as fx


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('validate')
  fx.write_msd(root / 'data', num_cases=3, shape=(24, 20, 7))  # 21 slices: no batch divides it
  config = fx.config(root / 'data')
  config.model.base_channels = 4
  sc = cache.prepare_cache(config, root / 'work', progress=False)
  model = build_model(config.model)
  variables = init_variables(model, 0, config.data.image_size)
  # Shift the head's bias so that some pixels come out foreground and some not.
  variables = jax.tree_util.tree_map_with_path(
    lambda p, x: x + 0.3 if 'head' in jax.tree_util.keystr(p) and 'bias' in str(p) else x,
    variables,
  )
  return config, sc, model, variables


def _table(setup, devices, batch_size):
  config, sc, model, variables = setup
  mesh = parallel.data_mesh(jax.devices()[:devices])
  step = steps.make_eval_step(model, mesh, threshold=0.5)
  return validate.slice_table(step, variables, sc, sc.case_ids, batch_size, mesh)


@pytest.mark.parametrize('devices', [3, 5, 8])
def test_any_device_count_gives_the_single_device_counts(setup, devices):
  """eval.batch_size 16 on 3, 5 or 8 devices (16 does not split over 3 or 5), 21 slices."""
  table_1, sums_1 = _table(setup, 1, 16)
  table_n, sums_n = _table(setup, devices, 16)
  assert table_1.shape == (21, 5)  # every slice once, no padding row
  np.testing.assert_array_equal(table_n, table_1)
  np.testing.assert_allclose(sums_n, sums_1, rtol=1e-5)


def test_counts_scores_and_loss_match_numpy(setup):
  config, sc, model, variables = setup
  table, sums = _table(setup, 1, 4)
  images = np.stack([np.asarray(sc.image(c)) for c in sc.case_ids])  # [N, Z, S, S, C]
  labels = np.stack([np.asarray(sc.label(c)) for c in sc.case_ids]).astype(np.float64)
  logits = np.concatenate(
    [np.asarray(model.apply(variables, im, train=False)['logits'][..., 0]) for im in images]
  ).astype(np.float64)  # [N, S, S], cases in order
  labels = labels.reshape(logits.shape)
  pred, label = logits > 0, labels > 0
  tp = (pred & label).sum(axis=(1, 2))
  fp = (pred & ~label).sum(axis=(1, 2))
  fn = (~pred & label).sum(axis=(1, 2))
  np.testing.assert_array_equal(table[:, 2:], np.stack([tp, fp, fn], axis=1))
  case_sizes = [sc.image(c).shape[0] for c in sc.case_ids]
  np.testing.assert_array_equal(table[:, 0], np.repeat(np.arange(3), case_sizes))

  # Per-volume DSC: each case's summed counts, then the mean over cases.
  bounds = np.cumsum([0, *case_sizes])
  dscs = []
  for a, b in zip(bounds[:-1], bounds[1:], strict=True):
    t, f, n = tp[a:b].sum(), fp[a:b].sum(), fn[a:b].sum()
    dscs.append(2 * t / (2 * t + f + n))
  scores = validate.scores(table, sc.case_ids)
  np.testing.assert_allclose(scores['dsc'], np.mean(dscs), rtol=1e-9)

  # The loss: soft Dice over every pixel of the split plus the mean BCE (weights 1, 1).
  p = 1 / (1 + np.exp(-logits))
  dice = 1 - (2 * (p * labels).sum() + 1.0) / (p.sum() + labels.sum() + 1.0)
  bce = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
  got = validate.loss(sums, labels.size, config.loss)
  np.testing.assert_allclose(got, dice + bce, rtol=1e-5)
  config.loss.w_bce = 0.0
  np.testing.assert_allclose(validate.loss(sums, labels.size, config.loss), dice, rtol=1e-5)
