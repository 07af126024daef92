"""dataset.json in both forms: MSD v1 (modality, value -> name labels, training list) and
nnU-Net v2 (channel_names, name -> value or regions, file_ending), and each mistake in it
refused naming the file and the key."""

import json

import pytest

from ecam_jax.data import dataset_json
from ecam_jax.errors import DataError


def _write(tmp_path, meta):
  path = tmp_path / 'dataset.json'
  path.write_text(json.dumps(meta))
  return path


NNUNET = {
  'channel_names': {'0': 'T2', '1': 'ADC'},
  'labels': {'background': 0, 'PZ': 1, 'TZ': 2},
  'numTraining': 32,
  'file_ending': '.nii.gz',
}


def test_the_two_forms(tmp_path):
  declared = dataset_json.read(_write(tmp_path, NNUNET))
  assert declared.form == dataset_json.NNUNET
  assert declared.channels == ('T2', 'ADC') and declared.label_values == (0, 1, 2)
  assert declared.names == {1: 'PZ', 2: 'TZ'} and declared.regions == ()
  assert (declared.file_ending, declared.num_training) == ('.nii.gz', 32)
  msd = {
    'modality': {'0': 'T2', '1': 'ADC'},
    'labels': {'0': 'background', '1': 'peripheral zone', '2': 'TZ'},
    'training': [],
  }
  declared = dataset_json.read(_write(tmp_path, msd))
  assert declared.form == dataset_json.MSD and declared.channels == ('T2', 'ADC')
  assert declared.names == {0: 'background', 1: 'peripheral_zone', 2: 'TZ'}
  assert declared.training == ()


def test_region_labels_with_their_class_order(tmp_path):
  """BraTS as nnU-Net declares it: the label values are regions_class_order's, a scalar
  label names its value, a list is a region."""
  meta = dict(
    NNUNET,
    labels={'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing': 3},
    regions_class_order=[1, 2, 3],
  )
  declared = dataset_json.read(_write(tmp_path, meta))
  assert declared.label_values == (0, 1, 2, 3) and declared.names == {3: 'enhancing'}
  assert declared.regions == (('whole_tumor', (1, 2, 3)), ('tumor_core', (2, 3)))
  del meta['regions_class_order']
  with pytest.raises(DataError, match='regions_class_order'):
    dataset_json.read(_write(tmp_path, meta))


@pytest.mark.parametrize(
  ('change', 'message'),
  [
    ({'file_ending': '.mha'}, r'"file_ending" is .\.mha.; this project reads NIfTI'),
    ({'labels': {'background': 0, 'PZ': 1.5}}, r"gives 'PZ' the value 1\.5; expected an integer"),
    ({'labels': {'background': 0, 'PZ': 'one'}}, r"gives 'PZ' the value 'one'"),
    ({'labels': {'background': 0, 'PZ': [1, 'x']}}, r'a list of integers >= 1'),
    ({'labels': {'background': 0, 'PZ': True}}, r"gives 'PZ' the value True"),
    ({'labels': {'PZ': 1}}, r'"labels" needs "background": 0'),
    ({'labels': {'background': 0, 'PZ': 1, 'ignore': 2}}, r'"ignore" label'),
    ({'channel_names': {'0': 'T2', '2': 'ADC'}}, r'"channel_names" has the keys'),
    ({'numTraining': -1}, r'"numTraining" is -1'),
  ],
)
def test_mistakes_name_the_file_and_the_key(tmp_path, change, message):
  with pytest.raises(DataError, match=rf'dataset\.json: .*{message}'):
    dataset_json.read(_write(tmp_path, {**NNUNET, **change}))


def test_not_json_or_not_an_object(tmp_path):
  (tmp_path / 'dataset.json').write_text('{')
  with pytest.raises(DataError, match='is not valid JSON'):
    dataset_json.read(tmp_path / 'dataset.json')
  with pytest.raises(DataError, match='expected a JSON object'):
    dataset_json.read(_write(tmp_path, [1]))
