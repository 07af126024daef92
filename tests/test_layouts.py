"""Case discovery in the msd, kits19 and paired layouts, and the errors a bad folder raises."""

import json

import pytest

from ecam_jax.configuration import ConfigError
from ecam_jax.data import layouts
from ecam_jax.data.errors import DataError

import nifti_fixtures as fx


def test_msd_cases_sorted_with_paths(tmp_path):
  fx.write_msd(tmp_path, num_cases=3)
  cases = layouts.discover_cases(fx.config(tmp_path).data)
  assert [c.case_id for c in cases] == ['case_000', 'case_001', 'case_002']
  assert cases[1].image == tmp_path / 'imagesTr' / 'case_001.nii.gz'
  assert cases[1].label == tmp_path / 'labelsTr' / 'case_001.nii.gz'
  assert layouts.declared_labels(fx.config(tmp_path).data, tmp_path) == (0, 1, 2)


def test_msd_missing_file_names_it_and_dataset_json(tmp_path):
  fx.write_msd(tmp_path, num_cases=2)
  (tmp_path / 'labelsTr' / 'case_001.nii.gz').unlink()
  with pytest.raises(DataError, match=r'labelsTr/case_001\.nii\.gz.*dataset\.json'):
    layouts.discover_cases(fx.config(tmp_path).data)


def test_msd_without_dataset_json_says_what_is_expected(tmp_path):
  (tmp_path / 'imagesTr').mkdir()
  with pytest.raises(DataError, match=r'dataset\.json is missing.*imagesTr'):
    layouts.discover_cases(fx.config(tmp_path).data)


def test_msd_modality_must_match_config(tmp_path):
  fx.write_msd(tmp_path, num_cases=1)
  with pytest.raises(ConfigError, match=r"modality 'CT'.*config.data.modality='MR'"):
    layouts.discover_cases(fx.config(tmp_path, modality='MR').data)


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
  assert layouts.declared_labels(data, tmp_path) == (0, 1, 2)


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
  assert layouts.declared_labels(data, tmp_path) == (0, 1)
  data.label_values = None
  assert layouts.declared_labels(data, tmp_path) == (0, 1, 2)  # (0,) + foreground_labels


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
