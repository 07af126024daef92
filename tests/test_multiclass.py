"""Several classes end to end: integer labels carried unchanged (nearest neighbour) through
orientation, caching and augmentation; a tiny multi-class phantom trains, validates per
class and predicts the dataset's label values in the input's geometry; the evaluator
scores per class. (The sharded step with K = 3 against one device: test_steps.py.)"""

import json

import jax
import nibabel as nib
import numpy as np
import pytest

from ecam_jax import (
  classes,
  evaluate,
  infer,
  label_maps,
  losses,
  parallel,
  steps,
  train,
  validate,
)
from ecam_jax.data import augment, cache, phantom, source, volumes

import nifti_fixtures as fx
import tiny_runs

# Label values chosen apart from the output indices, and listed out of order, so that a
# value passed through where an index is meant (or the reverse) shows.
VALUES = {'organ': 5, 'tumour': 2}


def _multiclass(config, classes_text='organ:5,tumour:2', regions='all:2+5'):
  config.data.merge_foreground = False
  config.data.classes = classes_text
  config.data.regions = regions
  return config


def _label_volume(shape=(20, 16, 6), seed=0):
  """uint8 label with values 0, 2, 5 and 3 (3: named by no class, background)."""
  rng = np.random.default_rng(seed)
  label = np.zeros(shape, np.uint8)
  label[3:15, 2:12, 1:5] = 5
  label[6:9, 4:7, 2:4] = 2
  label[rng.random(shape) > 0.97] = 3
  return label


@pytest.mark.parametrize('affine', [fx.LPS, fx.RAS, fx.KITS], ids=['lps', 'ras', 'kits'])
def test_orientation_and_cache_label_are_the_class_indices_by_nearest_neighbour(affine):
  label = _label_volume()
  config = _multiclass(fx.config(label_values=(0, 2, 3, 5), image_size=32))
  canonical, record = volumes.to_canonical(label, affine)
  assert sorted(np.unique(canonical)) == [0, 2, 3, 5]  # a permutation: nothing blended
  np.testing.assert_array_equal(volumes.from_canonical(canonical, record), label)
  y = volumes.preprocess_label(nib.Nifti1Image(label, affine), config.data)
  # organ (5) is index 1, tumour (2) index 2, 3 is background; resized by nearest neighbour
  # exactly as an independent zoom of the raw values, then mapped.
  expected = volumes.resize_inplane(canonical, 32, order=0)
  np.testing.assert_array_equal(y, np.select([expected == 5, expected == 2], [1, 2], 0))
  assert y.dtype == np.uint8 and set(np.unique(y)) == {0, 1, 2}
  # The restore of an index map is nearest too: values only from the map.
  assert set(np.unique(volumes.restore(y, record))) <= {0, 1, 2}


def test_multiclass_cache_keys_on_the_classes(tmp_path):
  root = fx.write_msd(tmp_path / 'data', num_cases=2, shape=(24, 20, 6))
  config = _multiclass(fx.config(root), 'organ:1,tumour:2', '')
  source.resolve_data(config, tmp_path / 'work')
  built = cache.prepare_cache(config, tmp_path / 'work', progress=False)
  for case_id in built.case_ids:
    raw = volumes.load_nifti(root / 'labelsTr' / f'{case_id}.nii.gz')
    np.testing.assert_array_equal(built.label(case_id), volumes.preprocess_label(raw, config.data))
    assert set(np.unique(built.label(case_id))) == {0, 1, 2}
  config.data.classes = 'organ:2,tumour:1'  # swapped: other targets, so a rebuild
  swapped = cache.prepare_cache(config, tmp_path / 'work', progress=False)
  case = swapped.case_ids[0]
  np.testing.assert_array_equal(
    np.asarray(swapped.label(case)), np.array([0, 2, 1], np.uint8)[built.label(case)]
  )


def test_augmentation_resamples_class_labels_by_nearest_neighbour():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 24, 32, 1)).astype(np.float32)
  labels = np.zeros((4, 24, 32, 1), np.uint8)
  labels[:, 4:20, 6:26] = 1
  labels[:, 9:14, 12:18] = 2
  aug = fx.config().augment
  aug.flip_prob, aug.rotate_degrees, aug.blur_prob = 0.5, 30.0, 0.0
  keys = jax.random.split(jax.random.key(3), 4)
  _, out = jax.jit(lambda k, i, lab: augment.augment_batch(k, i, lab, aug))(keys, images, labels)
  params = jax.vmap(lambda k: augment.sample_params(k, aug))(keys)
  for b in range(4):
    lab = labels[b, :, ::-1, 0] if params.flip[b] else labels[b, ..., 0]
    rows, cols = np.asarray(augment.rotation_coordinates(params.angle[b], 24, 32))
    r, c = np.round(rows).astype(int), np.round(cols).astype(int)
    inside = (r >= 0) & (r < 24) & (c >= 0) & (c < 32)
    expected = np.where(inside, lab[np.clip(r, 0, 23), np.clip(c, 0, 31)], 0)
    # Pixels whose sample point lies exactly between two (a rounding tie) may go either way.
    tie = (np.abs(rows % 1 - 0.5) < 1e-4) | (np.abs(cols % 1 - 0.5) < 1e-4)
    np.testing.assert_array_equal(np.asarray(out[b, ..., 0])[~tie], expected[~tie])
    assert set(np.unique(out[b])) <= {0, 1, 2}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny multi-class run on a phantom whose cases all have a lesion."""
  tmp = tmp_path_factory.mktemp('multiclass')
  phantom.generate(tmp / 'phantom', 3, seed=0, size=64, lesion_prob=1.0)
  config = tiny_runs.config(tmp / 'phantom', epochs=3)
  config.data.merge_foreground = False
  config.train.lr = 5e-3
  summary = train.train_and_evaluate(config, str(tmp / 'work'))
  return config, tmp / 'work', tmp / 'phantom', summary


def test_multiclass_run_validates_each_class(trained):
  config, workdir, _, summary = trained
  recorded = json.loads((workdir / 'config.json').read_text())
  assert recorded['data']['classes'] == 'target:1,lesion:2'
  assert recorded['model']['num_classes'] == 3
  records = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  val = [r for r in records if r['kind'] == 'val'][-1]
  for name in ('target', 'lesion'):
    assert val[f'label_voxels/{name}'] > 0
    assert f'slice_dsc/{name}' in val and f'hd95_mm/{name}' not in val
  target, lesion = val['dsc/target'], val['dsc/lesion']
  assert val['dsc'] == pytest.approx(np.nanmean([target, lesion]))
  assert summary['best']['metric'] == 'val_dsc' and target > 0.05
  train_records = [r for r in records if r['kind'] == 'train']
  assert {'ce', 'dice', 'dsc/target', 'dsc/lesion'} <= set(train_records[-1])


def test_multiclass_predict_writes_label_values_in_the_input_geometry(trained, tmp_path):
  config, workdir, root, _ = trained
  case = json.loads((workdir / 'splits.json').read_text())['test'][0]
  src = root / 'imagesTr' / f'{case}.nii.gz'
  (out,) = infer.predict_paths(config, str(workdir), str(src), str(tmp_path / 'out'), 'best')
  written, source_img = nib.load(out), nib.load(src)
  assert written.shape == source_img.shape and written.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(written.affine, source_img.affine)
  values = set(np.unique(np.asarray(written.dataobj)).tolist())
  assert 1 in values and values <= {0, 1, 2}

  # The written values are the classes' own: with the classes listed the other way round
  # (index 1 is the lesion, value 2), a network whose head picks index 1 everywhere writes 2.
  predictor = infer.Predictor(config, str(workdir), 'best')
  head = predictor.members[0]['params']['head']['bias']
  predictor.members[0]['params']['head']['bias'] = head.at[1].add(1e4)
  assert set(np.unique(predictor.segment_file(src, tmp_path / 'one.nii.gz'))) == {1}
  swapped = config.copy_and_resolve_references()
  swapped.data.classes = 'lesion:2,target:1'
  predictor.label_values = np.asarray(classes.output_label_values(swapped))
  assert set(np.unique(predictor.segment_file(src, tmp_path / 'two.nii.gz'))) == {2}


def test_eval_and_the_evaluator_score_each_class(trained, tmp_path):
  config, workdir, root, _ = trained
  summary = evaluate.evaluate_split(config, workdir, 'best')
  assert set(summary['classes']) == {'target', 'lesion'}
  assert summary['averaged_over'] == ['target', 'lesion']
  text = (workdir / 'eval' / 'summary.md').read_text()
  assert '## target' in text and '## lesion' in text
  # The folder evaluator, given the same classes, scores the written predictions alike.
  labels = tmp_path / 'labels'
  labels.mkdir()
  for pred in (workdir / 'eval' / 'predictions').iterdir():
    (labels / pred.name).symlink_to(root / 'labelsTr' / pred.name)
  folders = evaluate.evaluate_folders(
    workdir / 'eval' / 'predictions',
    labels,
    items=[('target', (1,)), ('lesion', (2,)), ('both', (1, 2))],
    class_names=['target', 'lesion'],
  )
  for name in ('target', 'lesion'):
    assert folders['classes'][name]['mean']['dsc'] == pytest.approx(
      summary['classes'][name]['mean']['dsc'], nan_ok=True
    )
  assert 'both' in folders['classes'] and folders['averaged_over'] == ['target', 'lesion']


def test_label_map_keeps_components_per_class_and_writes_label_values():
  """Class 1 (value 5) has a large and a small blob, class 2 (value 2) one small blob: with
  keep_components=1 each class keeps its own largest, so class 2's blob survives although
  it is smaller than class 1's second one."""
  prob = np.zeros((8, 16, 16, 3), np.float32)
  prob[..., 0] = 1.0
  blobs = [(1, np.s_[1:7, 1:8, 1:8]), (1, np.s_[2:5, 11:15, 11:15]), (2, np.s_[3:5, 10:13, 2:5])]
  for k, where in blobs:
    prob[where] = np.eye(3)[k]
  _, record = volumes.to_canonical(np.zeros((16, 16, 8)), fx.LPS)
  config = fx.config()
  config.eval.keep_components = 1
  values = np.array([0, 5, 2])
  out = label_maps.label_map(prob, record, config.eval, values)
  canonical = volumes.to_canonical(out, fx.LPS)[0]
  assert out.dtype == np.uint8 and out.shape == (16, 16, 8)
  assert (canonical == 5).sum() == 6 * 7 * 7 and (canonical == 2).sum() == 2 * 3 * 3
  assert (canonical[blobs[1][1]] == 0).all()
  config.eval.keep_components = 0
  assert (
    volumes.to_canonical(label_maps.label_map(prob, record, config.eval, values), fx.LPS)[0] == 5
  ).sum() == 6 * 7 * 7 + 3 * 4 * 4
  assert label_maps.label_map(prob, record, config.eval, np.array([0, 300, 2])).dtype == np.uint16
  config.eval.keep_components = (0, 1)  # one value per class (a cross-validation's choice)
  kept = volumes.to_canonical(label_maps.label_map(prob, record, config.eval, values), fx.LPS)[0]
  assert (kept == 5).sum() == 6 * 7 * 7 + 3 * 4 * 4 and (kept == 2).sum() == 2 * 3 * 3
  config.eval.keep_components = (1, 0)
  kept = volumes.to_canonical(label_maps.label_map(prob, record, config.eval, values), fx.LPS)[0]
  assert (kept == 5).sum() == 6 * 7 * 7


class _FixedLogits:
  """A stand-in network whose logits are its `variables`: the eval step's sums alone."""

  def apply(self, variables, images, train=False):
    return {'logits': variables['logits'], 'side_logits': ()}


@pytest.mark.parametrize('weights', [None, (0.5, 1.0, 3.0)])
def test_validation_loss_from_eval_sums_equals_the_training_loss(weights):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 8, 8, 3)).astype(np.float32) * 2
  labels = rng.integers(0, 3, (4, 8, 8, 1)).astype(np.uint8)
  config = fx.config()
  config.loss.class_weights = weights
  config.loss.w_bce = 0.7
  mesh = parallel.data_mesh(jax.devices()[:1])  # the logits are replicated, as variables are
  members = np.array([[0, 1, 0], [0, 0, 1]], bool)
  step = steps.make_eval_step(_FixedLogits(), mesh, 0.5, members, weights)
  out = step({'logits': logits}, {'image': np.zeros((4, 8, 8, 1), np.float32), 'label': labels})
  sums = np.asarray(out['loss_sums'], np.float64).sum(axis=0)
  expected, _ = losses.total_loss({'logits': logits}, labels, config.loss)
  assert validate.loss(sums, labels.size, config.loss) == pytest.approx(float(expected), rel=1e-5)
  # The counts of the same step, made into scores by hand: class 1's TP, FP, FN.
  pred, truth = logits.argmax(-1), labels[..., 0]
  counts = np.asarray(out['counts'])
  assert counts.shape == (4, 2, 3)
  np.testing.assert_array_equal(
    counts[:, 0].sum(0),
    [
      ((pred == 1) & (truth == 1)).sum(),
      ((pred == 1) & (truth != 1)).sum(),
      ((pred != 1) & (truth == 1)).sum(),
    ],
  )


def test_validation_scores_per_class_by_hand():
  """Rows (case, z, then TP, FP, FN of classes A and B): A present in both cases; B only
  predicted in case 0 (absent from its label) and absent from everything in case 1."""
  table = np.array([[0, 0, 3, 1, 0, 0, 2, 0], [0, 1, 1, 0, 2, 0, 0, 0], [1, 0, 4, 0, 0, 0, 0, 0]])
  val = validate.scores(table, ['c0', 'c1'], ('A', 'B'), ('A', 'B'))
  # A: case 0 TP 4 FP 1 FN 2 -> 8/11; case 1 TP 4 -> 1. B: case 0 DSC 0; case 1 undefined.
  assert val['dsc/A'] == pytest.approx((8 / 11 + 1) / 2)
  assert val['dsc/B'] == 0.0 and val['label_voxels/B'] == 0
  assert val['dsc'] == pytest.approx(((8 / 11 + 1) / 2 + 0) / 2)
  assert val['slice_dsc/A'] == pytest.approx((6 / 7 + 2 / 4 + 1) / 3)
  assert np.isnan(val['sensitivity/B']) and np.isnan(val['slice_sensitivity/B'])
  assert val['both_empty_slices/B'] == 2 and val['empty_label_slices/B'] == 1


def test_flip_tta_averages_class_probabilities(trained):
  config, workdir, root, _ = trained
  slices, _ = volumes.preprocess_image(next((root / 'imagesTr').iterdir()), config.data)
  slices = slices[:8]
  plain = infer.Predictor(config, str(workdir), 'best')
  tta_config = config.copy_and_resolve_references()
  tta_config.eval.tta_flip = True
  tta = infer.Predictor(tta_config, str(workdir), 'best')
  p, p_flipped = plain.probabilities(slices), plain.probabilities(slices[:, :, ::-1])
  assert p.shape == (8, 32, 32, 3)
  np.testing.assert_allclose(tta.probabilities(slices), (p + p_flipped[:, :, ::-1]) / 2, atol=1e-6)


def test_best_checkpoint_by_the_mean_or_a_named_class():
  val = {'dsc': 0.6, 'label_voxels': 30, 'loss': 0.4}
  val |= {'dsc/organ': 0.9, 'label_voxels/organ': 20, 'dsc/tumour': 0.3, 'label_voxels/tumour': 10}
  assert validate.selection(val) == ('val_dsc', 0.6)
  assert validate.selection(val, 'tumour') == ('val_dsc/tumour', 0.3)
  # No tumour in the validation cases and none predicted: the loss decides instead.
  val |= {'dsc/tumour': float('nan'), 'label_voxels/tumour': 0}
  assert validate.selection(val, 'tumour') == ('neg_val_loss', -0.4)
