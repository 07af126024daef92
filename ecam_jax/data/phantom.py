"""A synthetic abdominal CT dataset in the MSD layout: the demo's and the tests' data.

    python -m ecam_jax.data.phantom --out DIR --cases 12 --seed 0 [--size 256]

Each case is an int16 volume in Hounsfield units with a real affine (in-plane spacing
from a 300-380 mm field of view, 2.5-5 mm slices, 32-64 slices; even cases are stored
LPS-like as DICOM converters write them, odd cases RAS) and a uint8 label: a thin,
elongated, pancreas-like target (1) with, in some cases, a hypodense lesion (2) inside
it. Around it: body outline, subcutaneous and visceral fat, muscle, liver, spleen,
kidneys, aorta, IVC, a spine with discs, a stomach and bowel loops whose intensities
overlap the target's, then partial-volume blur and noise. The target lies in a bed of
soft tissue and is `target_contrast` HU brighter than it, so a threshold cannot find it
(tests/test_phantom.py measures this) while a small U-Net learns it from shape and place.

Difficulty knobs (keyword arguments of `generate`, flags of the CLI):
  target_contrast  HU of the target above its soft-tissue bed (40 HU); default 45.
  noise_sigma      white noise in HU at the generated resolution; default 15.
  target_scale     multiplies the target's thickness (1.0: at most ~2-3% of a slice's area).
  lesion_prob      chance that a case has a lesion (label 2) inside the target.
  lesion_scale     multiplies the lesion's radius and its extent along z (1.0: a few
                   slices, about a third of the target's thickness).
  lesion_drop_hu   how much darker than the target a lesion is; default 35.
"""

import argparse
import dataclasses
import json
import pathlib

import nibabel as nib
import numpy as np
import scipy.ndimage

from ecam_jax.atomic import atomic_path
from ecam_jax.errors import DataError

VERSION = 1  # bump when the generator changes what a seed gives: old folders are not reused
BED_HU = 40.0  # soft tissue around the target


@dataclasses.dataclass(frozen=True)
class Knobs:
  target_contrast: float = 45.0
  noise_sigma: float = 15.0
  target_scale: float = 1.0
  lesion_prob: float = 0.5
  lesion_scale: float = 1.0
  lesion_drop_hu: float = 35.0

  def params(self) -> dict[str, float]:
    """What phantom.json records: the lesion's size and contrast only where they are not
    the defaults, so that folders generated before they existed are reused."""
    out = dataclasses.asdict(self)
    for name in ('lesion_scale', 'lesion_drop_hu'):
      if out[name] == getattr(Knobs, name):
        del out[name]
    return out


def _ellipse(grid, cu, cv, au, av):
  """(box, inside): the bounding box of an ellipse in a slice and its mask within the box."""
  rows = slice(*np.searchsorted(grid, (cv - av, cv + av)))
  cols = slice(*np.searchsorted(grid, (cu - au, cu + au)))
  inside = ((grid[None, cols] - cu) / au) ** 2 + ((grid[rows, None] - cv) / av) ** 2 < 1
  return (rows, cols), inside


def _paint(sl, grid, cu, cv, au, av, value, over=-np.inf):
  """Sets the pixels of an ellipse in slice `sl` (those above `over`) to `value`."""
  box, inside = _ellipse(grid, cu, cv, au, av)
  view = sl[box]
  view[inside & (view > over)] = value


def _z_profile(t, centre, half):
  """Scale in [0, 1] of a structure's cross-section at slice position t (an ellipsoid's)."""
  return np.sqrt(np.clip(1 - ((t - centre) / half) ** 2, 0, None))


def _target_fields(rng, u, v, t, vc, knobs):
  """Signed distances (normalized units, < 0 inside), each [Z, H, W], of the target tube, its
  soft-tissue bed, a vein along its posterior edge and a duodenum-like loop around its head;
  and the target's centreline (u, v, radius, t centre, t half-extent) for the lesion.
  """
  s = np.linspace(0, 1, 48)
  u_head, u_tail = rng.uniform(-0.32, -0.18), rng.uniform(0.32, 0.5)
  cu = u_head + (u_tail - u_head) * s
  cv = vc - 0.05 + rng.uniform(0.03, 0.08) * np.sin(np.pi * s + rng.uniform(-0.6, 0.6))
  cv = cv + rng.uniform(-0.08, 0.04) * s
  radius = rng.uniform(0.075, 0.095) * (1 - s) + rng.uniform(0.05, 0.06) * s
  radius *= knobs.target_scale * (
    1 + 0.12 * np.sin(2 * np.pi * rng.uniform(2, 4) * s + rng.uniform(0, 7))
  )
  bed = 0.03 + 0.06 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 2) * s + rng.uniform(0, 7)))
  t_centre = rng.uniform(0.42, 0.55) + rng.uniform(0.0, 0.15) * (s - 0.5)  # tail higher
  t_half = rng.uniform(0.2, 0.28)
  angle = np.linspace(0.55, 1.45, 24) * np.pi  # the loop wraps the head on the patient's right
  loop_r = radius[0] + 0.06
  loop_u, loop_v = cu[0] - 0.02 + loop_r * np.cos(angle), cv[0] + loop_r * np.sin(angle)
  # Only pixels near the target can be inside any of these: compute in a bounding box.
  margin = 0.25
  cols = np.flatnonzero((u[0] > cu.min() - margin) & (u[0] < cu.max() + margin))
  rows = np.flatnonzero((v[:, 0] > cv.min() - margin) & (v[:, 0] < cv.max() + margin))
  box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  bu, bv = u[box][..., None], v[box][..., None]  # [h, w, 1]

  def dist(pu, pv):  # [h, w, n]: from each pixel to each centreline point
    return np.sqrt((bu - pu) ** 2 + (bv - pv) ** 2)

  d_target, d_vein, d_loop = dist(cu, cv), dist(cu, cv + radius), dist(loop_u, loop_v)
  fields = np.full((4, len(t), *u.shape), np.inf, np.float32)  # target, bed, vein, loop
  for z, tz in enumerate(t):
    profile = _z_profile(tz, t_centre, t_half)  # [48]
    if profile.max() > 0:
      r = np.where(profile > 0, radius * profile, -np.inf)
      fields[0][z][box] = (d_target - r).min(axis=-1)
      fields[1][z][box] = (d_target - r - bed).min(axis=-1)
      fields[2][z][box] = np.where(profile > 0.3, d_vein - 0.022, np.inf).min(axis=-1)
    if _z_profile(tz, t_centre[0], t_half * 1.1) > 0:
      fields[3][z][box] = d_loop.min(axis=-1) - 0.035
  return fields, (cu, cv, radius, t_centre, t_half)


def _case(rng, size: int, num_slices: int, knobs: Knobs) -> tuple[np.ndarray, np.ndarray]:
  """(HU float32 [Z, H, W], label uint8 [Z, H, W]) in the canonical orientation.

  Coordinates are normalized to [-1, 1]: u across (patient right -> left), v down
  (anterior -> posterior); t in [0, 1] runs inferior -> superior.
  """
  grid = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
  v, u = np.meshgrid(grid, grid, indexing='ij')  # [H, W]
  t = (np.arange(num_slices) + 0.5) / num_slices
  hu = np.full((num_slices, size, size), -1000.0, np.float32)
  vc, au, av = rng.uniform(0.0, 0.08), rng.uniform(0.82, 0.93), rng.uniform(0.55, 0.68)
  spine_v = vc + av * 0.52
  z_mm = t * num_slices * 4.0
  disc = (z_mm + rng.uniform(0, 30)) % 30 < 6
  kidney_t = rng.uniform(0.35, 0.55, 2)
  bowel = [  # (u, v, radius u, radius v, t centre, t half-extent, HU, has gas)
    (*rng.uniform((-0.6, -0.55, 0.05, 0.05, 0, 0.1, 10), (0.6, 0.15, 0.12, 0.12, 1, 0.3, 130)),
     rng.uniform() < 0.25)
    for _ in range(rng.integers(18, 31))
  ]  # fmt: skip
  fields, (cu, cv, radius, t_c, t_h) = _target_fields(rng, u, v, t, vc, knobs)
  for z, tz in enumerate(t):
    sl = hu[z]
    g = 1 + 0.04 * np.sin(2 * np.pi * tz)  # the body narrows and widens along z
    _paint(sl, grid, 0, vc, au * g, av * g, -100)  # subcutaneous fat
    _paint(sl, grid, 0, vc, au * g * 0.9, av * g * 0.9, 40)  # abdominal wall muscle
    _paint(sl, grid, 0, vc, au * g * 0.85, av * g * 0.85, -90)  # visceral fat
    for side in (-1, 1):
      _paint(sl, grid, side * 0.13, spine_v + 0.2, 0.1, 0.09, 50)  # paraspinal muscle
      _paint(sl, grid, side * 0.17, spine_v - 0.02, 0.05 + 0.03 * (1 - tz), 0.06, 45)  # psoas
      k = _z_profile(tz, kidney_t[(side + 1) // 2], 0.3)
      if k > 0:
        _paint(sl, grid, side * 0.36, spine_v - 0.12, 0.11 * k, 0.15 * k, 160)  # cortex
        _paint(sl, grid, side * 0.37, spine_v - 0.12, 0.06 * k, 0.09 * k, 100)  # medulla
    liver = np.clip((tz - 0.25) / 0.45, 0, 1) ** 0.5
    if liver > 0:
      _paint(sl, grid, -0.45, vc - 0.05, 0.4 * liver, 0.45 * liver, 65, over=-95)  # in the body
    spleen = _z_profile(tz, 0.8, 0.3)
    if spleen > 0:
      _paint(sl, grid, 0.55, vc + 0.15, 0.14 * spleen, 0.2 * spleen, 55)
    stomach = _z_profile(tz, 0.85, 0.25)
    if stomach > 0:
      _paint(sl, grid, 0.3, vc - 0.3, 0.22 * stomach, 0.15 * stomach, 50)
      _paint(sl, grid, 0.3, vc - 0.3, 0.18 * stomach, 0.11 * stomach, 10)
      _paint(sl, grid, 0.3, vc - 0.36, 0.12 * stomach, 0.05 * stomach, -900)  # gas
    _paint(sl, grid, 0, spine_v, 0.11, 0.1, 600)  # vertebral body cortex
    _paint(sl, grid, 0, spine_v, 0.09, 0.08, 90 if disc[z] else 220)
    _paint(sl, grid, 0, spine_v + 0.19, 0.09, 0.05, 500)  # posterior elements
    _paint(sl, grid, 0, spine_v + 0.12, 0.04, 0.035, 20)  # spinal canal
    _paint(sl, grid, 0.05, spine_v - 0.16, 0.05, 0.05, 170)  # aorta
    _paint(sl, grid, -0.12, spine_v - 0.15, 0.06, 0.045, 130)  # inferior vena cava
    for bu, bv, ru, rv, bt, bh, bhu, gas in bowel:
      b = _z_profile(tz, bt, bh)
      if b > 0:
        _paint(sl, grid, bu, bv, ru * b, rv * b, bhu)
        if gas:
          _paint(sl, grid, bu, bv, 0.5 * ru * b, 0.5 * rv * b, -900)
  hu[fields[1] < 0] = BED_HU  # soft tissue around the target
  hu[fields[2] < 0] = 150  # a splenic-vein-like vessel along its posterior edge
  hu[fields[3] < 0] = BED_HU + knobs.target_contrast - 10  # duodenum-like loop: wall ...
  hu[fields[3] < -0.02] = 10  # ... and fluid
  target = fields[0] < 0
  hu[target] = BED_HU + knobs.target_contrast
  label = target.astype(np.uint8)
  if rng.uniform() < knobs.lesion_prob:
    k = rng.integers(3, 20)  # near the head, where the target is thickest
    zl = rng.uniform(t_c[k] - 0.3 * t_h, t_c[k] + 0.3 * t_h)
    lr = rng.uniform(0.45, 0.7) * radius[k] * knobs.lesion_scale
    lesion = np.zeros_like(target)
    box, inside = _ellipse(grid, cu[k], cv[k], lr, lr)
    for z in np.flatnonzero(abs(t - zl) < 0.08 * knobs.lesion_scale):
      lesion[z][box] = inside
    lesion &= target
    hu[lesion] -= knobs.lesion_drop_hu
    label[lesion] = 2
  # Texture inside the body, partial-volume blur, then noise.
  texture = rng.normal(0, 8, (num_slices, -(-size // 8), -(-size // 8))).astype(np.float32)
  texture = texture.repeat(8, axis=1).repeat(8, axis=2)[:, :size, :size]
  hu += np.where(hu > -500, scipy.ndimage.gaussian_filter(texture, (0, 3, 3)), 0)
  hu = scipy.ndimage.gaussian_filter(hu, (0, 0.7, 0.7))
  hu += rng.normal(0, knobs.noise_sigma, hu.shape).astype(np.float32)
  return hu, label


def _to_file(canonical: np.ndarray, orientation: str) -> np.ndarray:
  """Canonical [Z, H, W] ('S', 'P', 'L') -> the file's [i, j, k] for an LPS or RAS affine."""
  if orientation == 'RAS':
    canonical = canonical[:, ::-1, ::-1]
  return np.ascontiguousarray(canonical.transpose(2, 1, 0))


def _affine(rng, size: int, num_slices: int, orientation: str) -> np.ndarray:
  pixel = rng.uniform(300.0, 380.0) / size
  thickness = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
  sign = -1.0 if orientation == 'LPS' else 1.0
  affine = np.diag([sign * pixel, sign * pixel, thickness, 1.0])
  affine[:3, 3] = (
    -sign * pixel * (size - 1) / 2,
    -sign * pixel * (size - 1) / 2,
    rng.uniform(-600, -400),
  )
  return affine


def _save(data: np.ndarray, affine: np.ndarray, dtype, path: pathlib.Path) -> None:
  img = nib.Nifti1Image(data.astype(dtype), affine)
  img.header.set_xyzt_units('mm')
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=1)
  nib.save(img, path)


def generate(
  out_dir: str | pathlib.Path,
  cases: int,
  seed: int,
  *,
  size: int = 256,
  target_contrast: float = Knobs.target_contrast,
  noise_sigma: float = Knobs.noise_sigma,
  target_scale: float = Knobs.target_scale,
  lesion_prob: float = Knobs.lesion_prob,
  lesion_scale: float = Knobs.lesion_scale,
  lesion_drop_hu: float = Knobs.lesion_drop_hu,
) -> list[pathlib.Path]:
  """Writes `cases` phantom cases to `out_dir` (MSD layout); returns the image paths.

  The folder appears complete or not at all. If it exists and was generated with the
  same arguments it is reused as it is; if it holds anything else, DataError.
  """
  out = pathlib.Path(out_dir)
  knobs = Knobs(
    target_contrast, noise_sigma, target_scale, lesion_prob, lesion_scale, lesion_drop_hu
  )
  params = {'version': VERSION, 'cases': cases, 'seed': seed, 'size': size}
  params.update(knobs.params())
  ids = [f'phantom_{i:03d}' for i in range(cases)]
  images = [out / 'imagesTr' / f'{i}.nii.gz' for i in ids]
  if out.exists():
    try:
      same = json.loads((out / 'phantom.json').read_text()) == params
    except (OSError, json.JSONDecodeError):
      same = False
    if not same:
      raise DataError(
        f'{out} exists and is not a phantom generated with {params}; choose another --out'
      )
    return images
  if cases < 1 or size < 32:
    raise ValueError(f'cases={cases}, size={size}; expected cases >= 1 and size >= 32')
  with atomic_path(out, directory=True) as tmp:
    (tmp / 'imagesTr').mkdir()
    (tmp / 'labelsTr').mkdir()
    for i, case_id in enumerate(ids):
      rng = np.random.default_rng([seed, i])
      num_slices = int(rng.integers(32, 65))
      orientation = 'LPS' if i % 2 == 0 else 'RAS'
      hu, label = _case(rng, size, num_slices, knobs)
      affine = _affine(rng, size, num_slices, orientation)
      hu = np.clip(np.round(hu), -1024, 3071)
      _save(_to_file(hu, orientation), affine, np.int16, tmp / 'imagesTr' / f'{case_id}.nii.gz')
      _save(_to_file(label, orientation), affine, np.uint8, tmp / 'labelsTr' / f'{case_id}.nii.gz')
    dataset = {
      'name': 'Phantom',
      'description': 'Synthetic abdominal CT, thin pancreas-like target: ecam_jax.data.phantom',
      'tensorImageSize': '3D',
      'modality': {'0': 'CT'},
      'labels': {'0': 'background', '1': 'target', '2': 'lesion'},
      'numTraining': cases,
      'numTest': 0,
      'training': [
        {'image': f'./imagesTr/{i}.nii.gz', 'label': f'./labelsTr/{i}.nii.gz'} for i in ids
      ],
      'test': [],
    }
    (tmp / 'dataset.json').write_text(json.dumps(dataset, indent=1))
    (tmp / 'phantom.json').write_text(json.dumps(params, indent=1))
  return images


def volume_file(directory: str | pathlib.Path, size: int, slices: int) -> pathlib.Path:
  """One phantom case of `size` x `size` in-plane resampled along z to `slices` slices
  (nearest), as DIRECTORY/volume_SxSxZ.nii.gz: a volume of a given shape to time."""
  directory = pathlib.Path(directory)
  image = nib.load(generate(directory / 'phantom', 1, seed=0, size=size)[0])
  data = np.asanyarray(image.dataobj)  # the phantom's files are [x, y, z]: axial slices last
  picks = np.linspace(0, data.shape[2] - 1, slices).round().astype(int)
  path = directory / f'volume_{size}x{size}x{slices}.nii.gz'
  nib.save(nib.Nifti1Image(data[:, :, picks], image.affine), path)
  return path


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='folder to create (MSD layout)')
  parser.add_argument('--cases', type=int, default=12)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--size', type=int, default=256, help='in-plane size in pixels')
  for field in dataclasses.fields(Knobs):
    parser.add_argument(f'--{field.name.replace("_", "-")}', type=float, default=field.default)
  args = parser.parse_args(argv)
  knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(Knobs)}
  paths = generate(args.out, args.cases, args.seed, size=args.size, **knobs)
  print(f'{len(paths)} cases in {args.out}')


if __name__ == '__main__':
  main()
