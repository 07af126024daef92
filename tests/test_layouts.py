"""Case discovery in the msd, kits19 and paired layouts, the dataset settings resolved from
dataset.json or the config, and the errors a bad folder or setting raises."""

import json

import numpy as np
import pytest

from ecam_jax.data import case_files, layouts
from ecam_jax.errors import ConfigError, DataError

import nifti_fixtures as fx


def test_msd_cases_sorted_with_paths(tmp_path):
  fx.write_msd(tmp_path, num_cases=3)
  cases = layouts.discover_cases(fx.config(tmp_path).data)
  assert [c.case_id for c in cases] == ['case_000', 'case_001', 'case_002']
  assert cases[1].image == tmp_path / 'imagesTr' / 'case_001.nii.gz'
  assert cases[1].label == tmp_path / 'labelsTr' / 'case_001.nii.gz'


def test_msd_missing_file_names_it_and_dataset_json(tmp_path):
  fx.write_msd(tmp_path, num_cases=2)
  (tmp_path / 'labelsTr' / 'case_001.nii.gz').unlink()
  with pytest.raises(DataError, match=r'labelsTr/case_001\.nii\.gz.*dataset\.json'):
    layouts.discover_cases(fx.config(tmp_path).data)


def test_msd_without_dataset_json_says_what_is_expected(tmp_path):
  (tmp_path / 'imagesTr').mkdir()
  with pytest.raises(DataError, match=r'dataset\.json is missing.*imagesTr'):
    layouts.discover_cases(fx.config(tmp_path).data)


def _write_mr_task(root, labels=None, modality=None):
  """dataset.json of a binary MR task (as MSD's Task02_Heart), with no volumes."""
  meta = {
    'modality': modality or {'0': 'MRI'},
    'labels': labels or {'0': 'background', '1': 'left atrium'},
    'training': [],
  }
  root.mkdir(parents=True, exist_ok=True)
  (root / 'dataset.json').write_text(json.dumps(meta))


def test_msd_settings_default_to_what_dataset_json_declares(tmp_path):
  _write_mr_task(tmp_path)
  data = fx.config(tmp_path).data
  assert data.modality == '' and data.foreground_labels is None  # default.py leaves them unset
  layouts.resolve_settings(data)
  assert (data.modality, data.label_values, data.foreground_labels) == ('MR', (0, 1), (1,))
  layouts.resolve_settings(data)  # its own result is consistent: nothing changes
  assert (data.modality, data.label_values, data.foreground_labels) == ('MR', (0, 1), (1,))


@pytest.mark.parametrize(
  'name,expected', [('CT', 'CT'), ('ct', 'CT'), ('MR', 'MR'), ('MRI', 'MR'), ('T2', 'MR')]
)
def test_msd_modality_names(tmp_path, name, expected):
  _write_mr_task(tmp_path, modality={'0': name})
  data = fx.config(tmp_path).data
  layouts.resolve_settings(data)
  assert data.modality == expected


def test_msd_foreground_is_every_non_zero_declared_label(tmp_path):
  _write_mr_task(tmp_path, labels={'0': 'background', '1': 'edema', '3': 'tumour', '2': 'x'})
  data = fx.config(tmp_path).data
  layouts.resolve_settings(data)
  assert data.label_values == (0, 1, 2, 3) and data.foreground_labels == (1, 2, 3)


def test_msd_explicit_settings_that_agree_are_kept(tmp_path):
  _write_mr_task(tmp_path, labels={'0': 'background', '1': 'organ', '2': 'tumour'})
  data = fx.config(tmp_path, modality='MR', foreground_labels=(2,), label_values=(0, 2, 1)).data
  layouts.resolve_settings(data)
  assert (data.modality, data.label_values, data.foreground_labels) == ('MR', (0, 1, 2), (2,))


def test_msd_explicit_settings_that_disagree_name_the_key(tmp_path):
  _write_mr_task(tmp_path)
  with pytest.raises(ConfigError, match=r"channel 'MRI' \(MR\) but config.data.modality='CT'"):
    layouts.resolve_settings(fx.config(tmp_path, modality='CT').data)
  with pytest.raises(
    ConfigError, match=r'foreground_labels has \[2\], not among .* \[0, 1\] \(.*dataset.json'
  ):
    layouts.resolve_settings(fx.config(tmp_path, foreground_labels=(1, 2)).data)
  with pytest.raises(ConfigError, match=r'declares the label values \[0, 1\].*label_values'):
    layouts.resolve_settings(fx.config(tmp_path, label_values=(0, 1, 2)).data)


def test_msd_without_modality_is_ct_and_bad_labels_are_named(tmp_path):
  (tmp_path / 'dataset.json').write_text(json.dumps({'labels': {'0': 'bg', '1': 'x'}}))
  data = fx.config(tmp_path).data
  layouts.resolve_settings(data)
  assert data.modality == 'CT'
  (tmp_path / 'dataset.json').write_text(json.dumps({'labels': ['background', 'x']}))
  with pytest.raises(DataError, match=r'dataset.json: "labels" is'):
    layouts.resolve_settings(fx.config(tmp_path).data)
  _write_mr_task(tmp_path, labels={'0': 'background'})
  with pytest.raises(ConfigError, match=r'no foreground: the declared label values are \[0\]'):
    layouts.resolve_settings(fx.config(tmp_path).data)
  _write_mr_task(tmp_path, modality={'0': 'T1', '1': 'T2'})  # two channels, each z-scored
  data = fx.config(tmp_path).data
  layouts.resolve_settings(data)
  assert (data.channels, data.modality) == (('T1', 'T2'), '')
  _write_mr_task(tmp_path, modality={'0': 'T1', '2': 'T2'})
  with pytest.raises(DataError, match=r'"modality" has the keys \[.0., .2.\]; expected'):
    layouts.resolve_settings(fx.config(tmp_path).data)


@pytest.mark.parametrize(
  'settings,expected',
  [
    ({}, ('CT', (0, 1), (1,))),
    ({'label_values': (0, 1, 2)}, ('CT', (0, 1, 2), (1, 2))),
    ({'foreground_labels': (2, 1)}, ('CT', (0, 1, 2), (1, 2))),
    ({'modality': 'MR', 'label_values': (0, 4), 'foreground_labels': (4,)}, ('MR', (0, 4), (4,))),
  ],
)
def test_layouts_without_dataset_json_default_to_ct_and_binary_labels(tmp_path, settings, expected):
  data = fx.config(tmp_path, layout='paired', **settings).data
  layouts.resolve_settings(data)
  assert (data.modality, data.label_values, data.foreground_labels) == expected


def test_paired_foreground_outside_label_values_names_the_key(tmp_path):
  data = fx.config(tmp_path, layout='kits19', label_values=(0, 1), foreground_labels=(2,)).data
  with pytest.raises(ConfigError, match=r'has \[2\].*\(config.data.label_values\)'):
    layouts.resolve_settings(data)


def test_msd_macos_entries_in_training_list_are_ignored(tmp_path):
  fx.write_msd(tmp_path, num_cases=1)
  meta = json.loads((tmp_path / 'dataset.json').read_text())
  fx.write_nifti(tmp_path / 'labelsTr' / '._case_000.nii.gz', fx.volume(0)[1])
  meta['training'].append(
    {'image': './imagesTr/._case_000.nii.gz', 'label': './labelsTr/._case_000.nii.gz'}
  )
  (tmp_path / 'dataset.json').write_text(json.dumps(meta))
  assert [c.case_id for c in layouts.discover_cases(fx.config(tmp_path).data)] == ['case_000']


def test_kits19_skips_cases_without_segmentation(tmp_path):
  for i in (0, 1, 210):
    image, label = fx.volume(i)
    fx.write_nifti(tmp_path / f'case_{i:05d}' / 'imaging.nii.gz', image, fx.KITS)
    if i < 210:
      fx.write_nifti(tmp_path / f'case_{i:05d}' / 'segmentation.nii.gz', label, fx.KITS)
  data = fx.config(tmp_path, layout='kits19').data
  cases = layouts.discover_cases(data)
  assert [c.case_id for c in cases] == ['case_00000', 'case_00001']
  assert cases[0].label == tmp_path / 'case_00000' / 'segmentation.nii.gz'


def test_kits19_case_without_imaging_is_an_error(tmp_path):
  fx.write_nifti(tmp_path / 'case_00003' / 'segmentation.nii.gz', fx.volume(0)[1])
  with pytest.raises(DataError, match=r'case_00003/imaging\.nii\.gz is missing'):
    layouts.discover_cases(fx.config(tmp_path, layout='kits19').data)


def test_paired_matches_by_file_name(tmp_path):
  for name in ('b.nii.gz', 'a.nii'):
    image, label = fx.volume(0)
    fx.write_nifti(tmp_path / 'images' / name, image)
    fx.write_nifti(tmp_path / 'labels' / name, label)
  (tmp_path / 'images' / '._a.nii').write_bytes(b'resource fork')
  (tmp_path / 'labels' / 'notes.txt').write_text('not a volume')
  data = fx.config(tmp_path, layout='paired', label_values=(0, 1)).data
  cases = layouts.discover_cases(data)
  assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
    ('a', 'a.nii', 'a.nii'),
    ('b', 'b.nii.gz', 'b.nii.gz'),
  ]


def test_paired_unmatched_image_is_named(tmp_path):
  fx.write_nifti(tmp_path / 'images' / 'x.nii.gz', fx.volume(0)[0])
  (tmp_path / 'labels').mkdir()
  with pytest.raises(DataError, match=r'images: 1 files have no file.*x\.nii\.gz'):
    layouts.discover_cases(fx.config(tmp_path, layout='paired').data)


@pytest.mark.parametrize('layout', ['msd', 'kits19', 'paired'])
def test_missing_root_names_it_and_the_layout(tmp_path, layout):
  with pytest.raises(DataError, match=rf"'{tmp_path}/nope' is not a directory.*'{layout}'"):
    layouts.discover_cases(fx.config(tmp_path / 'nope', layout=layout).data)


def test_empty_folder_is_an_error(tmp_path):
  with pytest.raises(DataError, match='no labelled cases'):
    layouts.discover_cases(fx.config(tmp_path, layout='kits19').data)


# --- nnU-Net v2 raw datasets ---------------------------------------------------------------


def _nnunet(tmp_path, **kwargs):
  root = fx.write_nnunet(tmp_path / 'data', **kwargs)
  return root, fx.config(root, layout='nnunet')


def test_nnunet_layout_finds_each_case_with_its_channels(tmp_path):
  root, config = _nnunet(tmp_path)
  (root / 'imagesTr' / '._case_000_0000.nii.gz').write_bytes(b'resource fork')
  cases = layouts.discover_cases(config.data)
  assert [c.case_id for c in cases] == ['case_000', 'case_001', 'case_002']
  assert cases[1].images == (
    root / 'imagesTr' / 'case_001_0000.nii.gz',
    root / 'imagesTr' / 'case_001_0001.nii.gz',
  )
  assert (
    cases[1].label == root / 'labelsTr' / 'case_001.nii.gz' and cases[1].image == cases[1].images[0]
  )
  layouts.resolve_settings(config.data)
  data = config.data
  assert (data.channels, data.modality, data.label_values) == (('T2', 'ADC'), '', (0, 1, 2))
  assert layouts.declared_names(data) == {1: 'organ', 2: 'tumour'}


def test_an_msd_folder_with_an_nnunet_dataset_json_is_read_as_nnunet(tmp_path):
  root, config = _nnunet(tmp_path)
  config.data.layout = 'msd'
  note = layouts.resolve_layout(config.data)
  assert config.data.layout == 'nnunet' and "layout='nnunet'" in note and 'channel_names' in note
  assert layouts.resolve_layout(config.data) is None  # already nnunet
  assert len(layouts.discover_cases(config.data)) == 3


def test_nii_file_ending_and_a_single_ct_channel(tmp_path):
  root, config = _nnunet(tmp_path, channels=('CT',), file_ending='.nii')
  cases = layouts.discover_cases(config.data)
  assert cases[0].images == (root / 'imagesTr' / 'case_000_0000.nii',)
  layouts.resolve_settings(config.data)
  assert (config.data.channels, config.data.modality) == (('CT',), 'CT')


@pytest.mark.parametrize(
  ('damage', 'message'),
  [
    (
      lambda r: (r / 'imagesTr/case_001_0001.nii.gz').unlink(),
      r"case 'case_001': .*case_001_0001\.nii\.gz is missing \(2 channels",
    ),
    (
      lambda r: (r / 'labelsTr/case_002.nii.gz').unlink(),
      r"case 'case_002': .*case_002_0000\.nii\.gz has no label file",
    ),
    (
      lambda r: [(r / f'imagesTr/case_000_000{c}.nii.gz').unlink() for c in (0, 1)],
      r"case 'case_000': .*case_000_0000\.nii\.gz is missing",
    ),
    (
      lambda r: (r / 'imagesTr/case_000_0002.nii.gz').write_bytes(b'x'),
      r"case 'case_000': .*case_000_0002\.nii\.gz is channel 2, but",
    ),
    (
      lambda r: (r / 'labelsTr/case_000.nii.gz').rename(r / 'labelsTr/case_000.nii'),
      r"case 'case_000': .*has no label file",
    ),
  ],
)
def test_nnunet_missing_or_extra_files_name_the_case_and_the_file(tmp_path, damage, message):
  root, config = _nnunet(tmp_path)
  damage(root)
  with pytest.raises(DataError, match=message):
    layouts.discover_cases(config.data)


def test_nnunet_num_training_must_count_the_cases(tmp_path):
  root, config = _nnunet(tmp_path)
  meta = json.loads((root / 'dataset.json').read_text())
  meta['numTraining'] = 4
  (root / 'dataset.json').write_text(json.dumps(meta))
  with pytest.raises(DataError, match=r'"numTraining" is 4 but .*labelsTr holds 3 labelled cases'):
    layouts.discover_cases(config.data)


def test_a_labelled_imagests_is_read_as_held_out_cases(tmp_path):
  """imagesTs/ with labelsTs/: its labelled cases are held out (the test split); an image
  of imagesTs without a label is left out; a label without its images is named."""
  root, config = _nnunet(tmp_path, test_cases=2)
  fx.write_nifti(root / 'imagesTs' / 'test_009_0000.nii.gz', np.zeros((4, 4, 2), np.int16))
  cases = layouts.discover_cases(config.data)
  assert [(c.case_id, c.held_out) for c in cases] == [
    ('case_000', False),
    ('case_001', False),
    ('case_002', False),
    ('test_000', True),
    ('test_001', True),
  ]
  assert cases[3].images[1] == root / 'imagesTs' / 'test_000_0001.nii.gz'
  (root / 'imagesTs' / 'test_001_0001.nii.gz').unlink()
  with pytest.raises(
    DataError, match=r"case 'test_001': .*imagesTs/test_001_0001\.nii\.gz is missing"
  ):
    layouts.discover_cases(config.data)


def test_explicit_channels_that_disagree_with_dataset_json_name_the_key(tmp_path):
  _, config = _nnunet(tmp_path)
  config.data.channels = ('T2',)
  with pytest.raises(
    ConfigError, match=r"declares the channels \['T2', 'ADC'\] but config.data.channels"
  ):
    layouts.resolve_settings(config.data)
  _, config = _nnunet(tmp_path)
  config.data.modality = 'MR'
  with pytest.raises(
    ConfigError, match=r"config.data.modality='MR' names one channel, but the dataset has 2"
  ):
    layouts.resolve_settings(config.data)


def test_cases_to_predict_from_channel_files_or_a_4d_file(tmp_path):
  root, _ = _nnunet(tmp_path)
  images = root / 'imagesTr'
  cases = case_files.cases_at(images, 2)
  assert [c for c, _ in cases] == ['case_000', 'case_001', 'case_002']
  assert cases[0][1] == (images / 'case_000_0000.nii.gz', images / 'case_000_0001.nii.gz')
  assert case_files.cases_at(images / 'case_001_0000.nii.gz', 2) == [('case_001', cases[1][1])]
  (images / 'case_002_0001.nii.gz').unlink()
  with pytest.raises(
    DataError, match=r"case 'case_002' has the channel files \[0\]; the model takes 2"
  ):
    case_files.cases_at(images, 2)
  with pytest.raises(DataError, match=r'case_002_0001\.nii\.gz is missing'):
    case_files.cases_at(images / 'case_002_0000.nii.gz', 2)
  four_d = fx.write_msd_4d(tmp_path / 'msd', num_cases=1)
  assert case_files.cases_at(four_d / 'imagesTr', 2) == [
    ('case_000', (four_d / 'imagesTr/case_000.nii.gz',))
  ]
