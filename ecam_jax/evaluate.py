"""The evaluator: scores segmentations against labels in the labels' own geometry (mm
spacing, slices along the axial axis), for two sources of segmentations:

- a folder of NIfTI predictions against a folder of labels, without a model:
    python -m ecam_jax.evaluate --predictions=DIR --labels=DIR [--output=DIR] [--foreground=1,2]
    python -m ecam_jax.evaluate ... --classes=pancreas:1,tumour:2 [--regions=all:1+2]
- the test split of a run (--mode=eval): a trained model (or an ensemble of folds)
  segments each case from its original files, into WORKDIR/eval/{predictions,overlays},
  scored into WORKDIR/eval/summary.{json,md};
- the folds of a cross-validation (--mode=crossval): each fold's model segments its own
  validation cases, scored together (out of fold) into WORKDIR/crossval/summary.{json,md}.

How counts become scores (NaN for an empty denominator, HD95/ASSD, means over cases) is
`ecam_jax.scoring`'s, shared with training and validation.
"""

import argparse
import os
import pathlib
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import ml_collections
import nibabel as nib
import numpy as np
import tqdm

from ecam_jax import classes, overlay, postprocess, scoring
from ecam_jax.data import case_files, normalization, splits_file, volumes
from ecam_jax.errors import DataError

# Affines of a prediction and its label must agree to this tolerance (float32 headers).
AFFINE_ATOL = 1e-4


def _case_files(folder: pathlib.Path, role: str) -> dict[str, pathlib.Path]:
  """Case id (file name without .nii/.nii.gz) -> path, for every NIfTI file in `folder`."""
  if not folder.is_dir():
    raise ValueError(f'{role} folder {folder} does not exist or is not a folder')
  files = {}
  for path in case_files.nifti_files(folder):
    case_id = case_files.case_id_of(path)
    if case_id in files:
      raise ValueError(f'{role} case {case_id!r} is in two files: {files[case_id]} and {path}')
    files[case_id] = path
  if not files:
    raise ValueError(f'{role} folder {folder} holds no .nii or .nii.gz files')
  return files


def _load_nifti(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
  """(3-D integer label map, affine, voxel size per array axis in mm) of a NIfTI file."""
  image = volumes.load_nifti(path)  # DataError naming the file: not NIfTI, corrupt, not 3-D
  data = volumes.integer_labels(image, path)  # DataError naming the file: not whole numbers
  # The header's zooms are the voxel sizes along the array axes, in the array's order.
  return data, image.affine, tuple(float(z) for z in image.header.get_zooms()[:3])


def axial_axis(affine: np.ndarray) -> int:
  """The array axis that runs inferior-superior in world space (its code is S or I)."""
  codes = nib.aff2axcodes(affine)
  if 'S' in codes:
    return codes.index('S')
  if 'I' in codes:
    return codes.index('I')
  raise ValueError(f'affine has no axial (S/I) axis: axis codes {codes}')


Items = Sequence[tuple[str, Sequence[int]]]


def score_items(
  pred: np.ndarray, label: np.ndarray, items: Items, spacing, slice_axis: int
) -> dict[str, dict]:
  """{name: scoring.score_case} for each scored (name, label values) item: its mask is
  where a map holds one of the values, in the prediction and in the label alike."""
  return {
    name: scoring.score_case(np.isin(pred, values), np.isin(label, values), spacing, slice_axis)
    for name, values in items
  }


def summarize(per_case: dict[str, dict[str, dict]], items: Items, class_names) -> dict:
  """scoring.summarize of a binary run's one item, else scoring.summarize_classes."""
  if len(items) == 1:
    return scoring.summarize({case: scores[items[0][0]] for case, scores in per_case.items()})
  per_item = {name: {case: s[name] for case, s in per_case.items()} for name, _ in items}
  return scoring.summarize_classes(per_item, class_names)


def evaluate_folders(
  pred_dir: str | os.PathLike,
  label_dir: str | os.PathLike,
  *,
  foreground_labels: Sequence[int] = (1, 2),
  items: Items | None = None,
  class_names: Sequence[str] | None = None,
  out_dir: str | os.PathLike | None = None,
) -> dict:
  """Scores every prediction in `pred_dir` against the label of the same name in
  `label_dir` (.nii and .nii.gz match each other): foreground = a value in
  `foreground_labels`, in both files; or, with `items` ((name, label values), ...), each
  item apart, averaged over `class_names` (default: every item). Spacing comes from the
  label's header; per-slice scores run along the label's axial axis (`axial_axis`). Any
  unmatched file, or a pair with different shapes or affines, is an error, as in nnU-Net
  (no partial scores). Returns `scoring.summarize`'s (or `summarize_classes`') dict, also
  written to `out_dir` when given."""
  items = list(items or [(classes.BINARY_NAME, tuple(foreground_labels))])
  class_names = list(class_names or [name for name, _ in items])
  preds = _case_files(pathlib.Path(pred_dir), 'prediction')
  labels = _case_files(pathlib.Path(label_dir), 'label')
  for mine, theirs, what in ((preds, labels, 'label'), (labels, preds, 'prediction')):
    missing = sorted(set(mine) - set(theirs))
    if missing:
      names = ', '.join(str(mine[c]) for c in missing[:5]) + (' ...' if len(missing) > 5 else '')
      raise ValueError(f'no {what} with the same name for {len(missing)} file(s): {names}')
  cases = {}
  for case_id in sorted(labels):
    pred, pred_affine, _ = _load_nifti(preds[case_id])
    label, label_affine, spacing = _load_nifti(labels[case_id])
    if pred.shape != label.shape:
      raise ValueError(
        f'{preds[case_id]}: shape {pred.shape} differs from label {labels[case_id]} {label.shape}'
      )
    if not np.allclose(pred_affine, label_affine, rtol=0, atol=AFFINE_ATOL):
      raise ValueError(
        f'{preds[case_id]}: affine differs from label {labels[case_id]}\n'
        f'{pred_affine}\nvs\n{label_affine}'
      )
    try:
      slice_axis = axial_axis(label_affine)
    except ValueError as e:
      raise ValueError(f'{labels[case_id]}: {e}') from None
    cases[case_id] = score_items(pred, label, items, spacing, slice_axis)
  summary = summarize(cases, items, class_names)
  if out_dir is not None:
    scoring.write_summary(summary, out_dir)
  return summary


def evaluate_split(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  which: str,
  split: str = 'test',
  members: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
  """--mode=eval: segments the `split` cases of WORKDIR/splits.json from their original
  files with checkpoint `which` ('best', 'latest' or a path) and scores them in their own
  geometry into WORKDIR/eval/summary.{json,md}; the predictions go to
  WORKDIR/eval/predictions and overlays to WORKDIR/eval/overlays. With `members` (run
  folders, e.g. WORKDIR/fold_0 ...), their ensemble segments the split they share.
  Returns the summary."""
  from ecam_jax import infer  # here: folder scoring (the CLI) needs neither jax nor a model

  workdir = pathlib.Path(workdir)
  runs = [pathlib.Path(m) for m in members] or [workdir]
  cases = _cases(config, runs[0])
  chosen = [_run_splits(run, cases)[split] for run in runs]
  if any(c != chosen[0] for c in chosen):
    raise DataError(
      f'the runs {", ".join(map(str, runs))} hold different {split!r} splits in their '
      'splits.json; an ensemble scores the split its members share'
    )
  if not chosen[0]:
    raise DataError(f'{runs[0] / "splits.json"}: the {split!r} split has no cases to score')
  predictor = infer.Predictor(config, runs if members else workdir, which)
  scores = _segment_and_score(config, predictor, cases, chosen[0], workdir / 'eval', split)
  summary = summarize(scores, classes.scored(config), classes.class_names(config))
  summary['checkpoint'] = {'which': which, **predictor.meta}
  summary['postprocessing'] = {
    'keep_components': list(predictor.decision.keep_components),
    'keep_foreground_component': predictor.decision.keep_foreground_component,
    'chosen_by': str(predictor.postprocessing or 'config.eval.keep_components'),
  }
  scoring.write_summary(summary, workdir / 'eval')
  print(headline(summary))
  return summary


def evaluate_folds(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, which: str
) -> dict[str, Any]:
  """--mode=crossval: the out-of-fold evaluation of a cross-validation whose folds were
  trained in WORKDIR/fold_0 .. fold_{k-1} (k = config.data.folds): each fold's checkpoint
  `which` segments the validation cases of its own splits.json, and every case, each
  validated by exactly one fold, is scored together into WORKDIR/crossval/summary.{json,md}
  (predictions in WORKDIR/crossval/predictions), as --mode=eval scores a test split. The
  predictions keep every component (config.eval.keep_components is not applied); from them
  the postprocessing of each class is chosen (postprocess.Chooser) into
  WORKDIR/crossval/postprocessing.json, which prediction with these folds then applies.
  Returns the summary; its 'folds' lists each fold's run, checkpoint and cases, its
  'postprocessing' the choice."""
  from ecam_jax import infer  # here: folder scoring (the CLI) needs neither jax nor a model

  workdir = pathlib.Path(workdir)
  runs = [workdir / f'fold_{f}' for f in range(int(config.data.folds))]
  missing = [str(run) for run in runs if not (run / 'splits.json').is_file()]
  if missing:
    raise DataError(
      f'no trained fold in {", ".join(missing)}: --mode=crossval scores the folds trained '
      'with --workdir=WORKDIR/fold_K --config.data.fold=K for every K below '
      f'config.data.folds={config.data.folds}'
    )
  cases = _cases(config, runs[0])
  raw = config.copy_and_resolve_references()  # the folds' predictions as they come
  with raw.unlocked():
    raw.eval.keep_components = None
  values = classes.output_label_values(config)[1:]
  chooser = postprocess.Chooser(classes.class_names(config), values)
  out, scores, validated, folds = workdir / 'crossval', {}, {}, []
  for f, run in enumerate(runs):
    split = _run_splits(run, cases)
    if split['val'] == split['train']:
      raise DataError(f'{run / "splits.json"}: fold all validates on its training cases')
    for case in split['val']:
      if case in validated:
        raise DataError(
          f'case {case!r} is validated by fold_{validated[case]} and fold_{f}: the folds were '
          "trained on different splits (use one dataset's splits_final.json for all)"
        )
      validated[case] = f
    predictor = infer.Predictor(raw, run, which)
    scores |= _segment_and_score(raw, predictor, cases, split['val'], out, f'fold {f}', chooser)
    folds.append({'fold': f, 'workdir': str(run), 'cases': split['val'], **predictor.meta})
  expected = set(_run_splits(runs[0], cases)['train']) | set(_run_splits(runs[0], cases)['val'])
  unscored = sorted(expected - set(scores))
  if unscored:
    raise DataError(
      f"{len(unscored)} training cases of {runs[0]} are in no fold's val split (e.g. "
      f'{unscored[0]!r}): the folds were trained on different splits'
    )
  summary = summarize(scores, classes.scored(config), classes.class_names(config))
  summary['checkpoint'] = {'which': which}
  summary['folds'] = folds
  summary['postprocessing'] = chooser.decide()
  scoring.write_summary(summary, out)
  path = postprocess.write(summary['postprocessing'], out)
  print(headline(summary))
  steps = dict(summary['postprocessing']['classes'])
  if len(steps) > 1:
    steps = {'all foreground merged': summary['postprocessing']['foreground'], **steps}
  for name, choice in steps.items():
    kept = 'keeps its largest component' if choice['keep_largest_component'] else 'keeps all'
    before, after = (
      'n/a' if v is None else f'{v:.4f}'
      for v in (choice['dsc_as_predicted'], choice['dsc_largest_component'])
    )
    print(
      f'postprocessing: {name} {kept} (out-of-fold DSC {before} as predicted, {after} with '
      f'its largest component alone); in {path}'
    )
  return summary


def _cases(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
  """{case id: case_files.Case} of the run's data (its config, or its config.json)."""
  from ecam_jax.data import source

  return {c.case_id: c for c in source.resolve_data(config, workdir)}


def _run_splits(run: pathlib.Path, cases: dict[str, Any]) -> dict[str, list[str]]:
  return splits_file.read_splits_file(run / 'splits.json', sorted(cases), run_file=True)


def _segment_and_score(
  config: ml_collections.ConfigDict,
  predictor,
  cases: dict[str, Any],
  case_ids: list[str],
  out: pathlib.Path,
  what: str,
  chooser: postprocess.Chooser | None = None,
) -> dict[str, dict]:
  """{case: score_items} of `case_ids` segmented by `predictor` from their original files
  into out/predictions, with their overlays in out/overlays; each prediction and label also
  go to `chooser`. Overlapped: while the model segments a case, threads read the next
  case's image and label and write the last mask (Predictor.segmented); each file is read
  once."""
  items = classes.scored(config)
  binary = not classes.is_multiclass(config)
  fg = np.asarray(classes.output_label_values(config)[1:])
  scores = {}
  pairs = [(cases[c].images, out / 'predictions' / f'{c}.nii.gz') for c in case_ids]
  with futures.ThreadPoolExecutor(max_workers=1) as pool:
    labels = _read_ahead(pool, [cases[c].label for c in case_ids])
    done = zip(case_ids, predictor.segmented(pairs), labels, strict=True)
    for case_id, (pred, arrays, _), (label_img, label) in tqdm.tqdm(
      done, total=len(case_ids), desc=f'eval {what}', unit='case'
    ):
      if binary:  # the written mask holds 1; the label its values
        label = np.isin(label, config.data.foreground_labels).astype(np.uint8)
      axis = axial_axis(label_img.affine)
      spacing = tuple(float(z) for z in label_img.header.get_zooms()[:3])
      scored = [(classes.BINARY_NAME, (1,))] if binary else items
      scores[case_id] = score_items(pred, label, scored, spacing, axis)
      if chooser is not None:
        chooser.add(pred, label)
      overlay_path = out / 'overlays' / f'{case_id}.png'
      _case_overlay(arrays[0], np.isin(label, fg), np.isin(pred, fg), axis, config, overlay_path)
  return scores


def _read_ahead(
  pool: futures.Executor, paths: list[pathlib.Path]
) -> Iterator[tuple[nib.Nifti1Image, np.ndarray]]:
  """(image, its integer values) of each label file; the next one is read in `pool` while
  the caller works on this one."""

  def read(path):
    img = volumes.load_nifti(path)
    return img, volumes.integer_labels(img, path)

  ahead = pool.submit(read, paths[0]) if paths else None
  for k in range(len(paths)):
    done = ahead.result()
    if k + 1 < len(paths):
      ahead = pool.submit(read, paths[k + 1])
    yield done


def headline(summary: dict) -> str:
  """What the CLIs print of a summary: the header and mean row of a binary one (and its
  count line), a multi-class one's table of classes and their mean."""
  table = scoring.markdown_table(summary).splitlines()
  if 'classes' in summary:
    return '\n'.join(table[: len(summary['classes']) + 3])
  return '\n'.join(table[:2] + table[-3:])


def _case_overlay(
  image: np.ndarray,
  label: np.ndarray,
  pred: np.ndarray,
  axis: int,
  config: ml_collections.ConfigDict,
  path: pathlib.Path,
) -> None:
  """A few slices with the most label (or prediction) voxels, contours over the image
  (channel 0's array, in the file's voxel order)."""
  areas = (label | pred).sum(axis=tuple(a for a in range(3) if a != axis))
  picks = np.argsort(-areas, kind='stable')[: config.eval.overlay_slices]
  data = normalization.normalize(image, config.data)
  tiles = [
    overlay.overlay(np.take(data, z, axis), np.take(label, z, axis), np.take(pred, z, axis))
    for z in sorted(picks)
  ]
  path.parent.mkdir(parents=True, exist_ok=True)
  overlay.write_png(path, overlay.tile(tiles, columns=len(tiles)))


def _labels_arg(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected integers like 1,2; got {text!r}') from None


def main(argv: Sequence[str] | None = None) -> None:
  """CLI: scores a folder of predictions against a folder of labels; prints the mean row."""
  parser = argparse.ArgumentParser(prog='python -m ecam_jax.evaluate', description=__doc__)
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.add_argument('--predictions', required=True, help='folder of NIfTI predictions')
  parser.add_argument('--labels', required=True, help='folder of NIfTI labels, same names')
  parser.add_argument('--output', help='folder for summary.json and summary.md')
  parser.add_argument('--foreground', type=_labels_arg, default=(1, 2), help='e.g. 1,2')
  parser.add_argument('--classes', default='', help='score classes apart, e.g. pancreas:1,tumour:2')
  parser.add_argument('--regions', default='', help='with --classes: unions, e.g. all:1+2')
  args = parser.parse_args(argv)
  try:
    named = classes.parse_classes(args.classes, key='--classes')
    regions = classes.parse_regions(args.regions, key='--regions')
    if regions and not named:
      raise ValueError('--regions needs --classes')
    items = [(name, (value,)) for name, value in named] + list(regions)
    summary = evaluate_folders(
      args.predictions,
      args.labels,
      foreground_labels=args.foreground,
      items=items or None,
      class_names=[name for name, _ in named] or None,
      out_dir=args.output,
    )
  except ValueError as e:
    parser.exit(1, f'error: {e}\n')
  print(headline(summary))


if __name__ == '__main__':
  main()
