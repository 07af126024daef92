"""Small NIfTI datasets written on the fly for the data tests, and the prediction-geometry
check every network's tests make (a module, not a conftest)."""

import json
import pathlib

import ml_collections
import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from ecam_jax import infer
from ecam_jax.configuration import load_config

CONFIG = pathlib.Path(__file__).parents[1] / 'configs' / 'default.py'
LPS = np.diag([-0.8, -0.8, 3.0, 1.0])  # what DICOM converters write: i -> left, j -> posterior
RAS = np.diag([0.8, 0.8, 3.0, 1.0])
# KiTS19 stores [slice, H, W]; its first axis runs inferior (world -z), then posterior, left.
KITS = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]])


def config(root='', layout='msd', **data) -> ml_collections.ConfigDict:
  """The default config with tiny-data settings and `data` overrides."""
  c = load_config(CONFIG)
  c.data.root = str(root)
  c.data.layout = layout
  c.data.image_size = 32
  c.data.prepare_workers = 1
  c.data.prefetch_batches = 0
  c.train.batch_size = 4
  for key, value in data.items():
    c.data[key] = value
  return c


def volume(seed: int, shape=(24, 24, 8)) -> tuple[np.ndarray, np.ndarray]:
  """(int16 HU image, uint8 label with values 0, 1, 2) in the file's voxel order."""
  rng = np.random.default_rng(seed)
  image = rng.normal(40, 30, shape).round().astype(np.int16)
  label = np.zeros(shape, np.uint8)
  x, y, z = (rng.integers(2, s // 2) for s in shape)
  label[x : x + shape[0] // 3, y : y + shape[1] // 3, z : z + max(1, shape[2] // 2)] = 1
  label[x : x + 2, y : y + 2, z] = 2
  image[label > 0] += 100
  return image, label


def write_nifti(path: pathlib.Path, data: np.ndarray, affine: np.ndarray = LPS) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(data, affine), path)
  return path


def write_msd(
  root: pathlib.Path, num_cases: int = 3, shape=(24, 24, 8), affine=LPS
) -> pathlib.Path:
  """An MSD task folder with dataset.json (listed in reverse order) and a macOS '._' file."""
  ids = [f'case_{i:03d}' for i in range(num_cases)]
  for i, case_id in enumerate(ids):
    image, label = volume(i, shape)
    write_nifti(root / 'imagesTr' / f'{case_id}.nii.gz', image, affine)
    write_nifti(root / 'labelsTr' / f'{case_id}.nii.gz', label, affine)
  (root / 'imagesTr' / '._case_000.nii.gz').write_bytes(b'\x00\x05\x16\x07 resource fork')
  meta = {
    'name': 'Tiny',
    'modality': {'0': 'CT'},
    'labels': {'0': 'background', '1': 'organ', '2': 'tumour'},
    'numTraining': num_cases,
    'training': [
      {'image': f'./imagesTr/{c}.nii.gz', 'label': f'./labelsTr/{c}.nii.gz'} for c in reversed(ids)
    ],
    'test': [],
  }
  (root / 'dataset.json').write_text(json.dumps(meta))
  return root


def oblique_affine(degrees: float = 12.0) -> np.ndarray:
  """Axes permuted and flipped (neither RAS nor LPS), anisotropic, tilted off the axes."""
  affine = np.zeros((4, 4))
  affine[:3, :3] = np.array([[0, 0.7, 0], [0, 0, -3.0], [-0.7, 0, 0]])
  affine[:3, 3] = (-30.0, 12.0, 55.0)
  affine[3, 3] = 1.0
  tilt = np.eye(4)
  tilt[:3, :3] = Rotation.from_euler('yz', [degrees, -degrees / 3], degrees=True).as_matrix()
  return tilt @ affine


def assert_prediction_keeps_geometry(config, variables, folder: pathlib.Path, shape) -> None:
  """Segments a random volume of `shape` stored with `oblique_affine` through
  infer.Predictor with `variables`: the mask file has the input's shape, affine and sform,
  uint8 values in {0, 1}, and holds the returned mask."""
  affine = oblique_affine()
  assert nib.aff2axcodes(affine) not in (('R', 'A', 'S'), ('L', 'P', 'S'))
  volume = np.random.default_rng(0).uniform(-200, 300, shape).astype(np.float32)
  src, dst = folder / 'in.nii.gz', folder / 'out.nii.gz'
  nib.save(nib.Nifti1Image(volume, affine), src)
  mask = infer.Predictor(config, None, variables=variables).segment_file(src, dst)
  written, source = nib.load(dst), nib.load(src)
  assert written.shape == source.shape == mask.shape
  assert written.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(written.affine, source.affine)
  np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
  np.testing.assert_array_equal(np.asanyarray(written.dataobj), mask)
  assert set(np.unique(mask)) <= {0, 1}


def channel_volumes(seed: int, shape=(24, 24, 8), channels: int = 2):
  """([one int16 image per channel], uint8 label): channel 0 is `volume`'s image, channel c
  the same anatomy with another contrast and noise."""
  image, label = volume(seed, shape)
  rng = np.random.default_rng(1000 + seed)
  extra = [
    (image * (1 + c) + rng.normal(0, 10, shape)).round().astype(np.int16)
    for c in range(1, channels)
  ]
  return [image, *extra], label


NNUNET_LABELS = {'background': 0, 'organ': 1, 'tumour': 2}


def write_nnunet(
  root: pathlib.Path,
  num_cases: int = 3,
  shape=(24, 24, 8),
  channels=('T2', 'ADC'),
  labels=None,
  file_ending='.nii.gz',
  test_cases: int = 0,
) -> pathlib.Path:
  """A dataset in nnU-Net v2's raw format: imagesTr/{CASE}_{XXXX}, labelsTr/{CASE}; with
  `test_cases`, a labelled test set test_000.. in imagesTs/ and labelsTs/."""
  named = [('Tr', f'case_{i:03d}', i) for i in range(num_cases)]
  named += [('Ts', f'test_{i:03d}', 100 + i) for i in range(test_cases)]
  for part, case_id, seed in named:
    images, label = channel_volumes(seed, shape, len(channels))
    for c, image in enumerate(images):
      write_nifti(root / f'images{part}' / f'{case_id}_{c:04d}{file_ending}', image)
    write_nifti(root / f'labels{part}' / f'{case_id}{file_ending}', label)
  meta = {
    'channel_names': {str(c): name for c, name in enumerate(channels)},
    'labels': NNUNET_LABELS if labels is None else labels,
    'numTraining': num_cases,
    'file_ending': file_ending,
  }
  (root / 'dataset.json').write_text(json.dumps(meta))
  return root


def write_msd_4d(root: pathlib.Path, num_cases: int = 3, shape=(24, 24, 8), channels=('T2', 'ADC')):
  """The same cases as `write_nnunet` in MSD v1's layout: one 4-D [x, y, z, C] file each."""
  ids = [f'case_{i:03d}' for i in range(num_cases)]
  for i, case_id in enumerate(ids):
    images, label = channel_volumes(i, shape, len(channels))
    write_nifti(root / 'imagesTr' / f'{case_id}.nii.gz', np.stack(images, axis=-1))
    write_nifti(root / 'labelsTr' / f'{case_id}.nii.gz', label)
  meta = {
    'modality': {str(c): name for c, name in enumerate(channels)},
    'labels': {str(v): name for name, v in NNUNET_LABELS.items()},
    'training': [
      {'image': f'./imagesTr/{c}.nii.gz', 'label': f'./labelsTr/{c}.nii.gz'} for c in ids
    ],
  }
  (root / 'dataset.json').write_text(json.dumps(meta))
  return root
