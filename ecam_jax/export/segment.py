"""Segmenting a volume from an export's contract alone, with either runtime: what
`python -m ecam_jax.export_check` compares, and what a deployment has to reproduce.

The numbers come from preprocessing.json (never from a config); the steps are the
project's own (data/volumes.py, label_maps.label_map), so a contract that omitted a
number the pipeline needs would fail here.
"""

import dataclasses
import time

import nibabel as nib
import numpy as np

from ecam_jax.data import volumes
from ecam_jax.export import contract as contract_lib
from ecam_jax.export.runtimes import Run
from ecam_jax.label_maps import label_map


@dataclasses.dataclass(frozen=True)
class Segmentation:
  views: list[np.ndarray]  # logits [Z, S, S, K] of the slices (and of their mirrors, TTA)
  labels: np.ndarray  # the label map in the file's voxel grid
  seconds: float  # spent in the runtime


def _logits(run: Run, slices: np.ndarray, batch: int) -> np.ndarray:
  """[Z, S, S] -> [Z, S, S, K] in batches of `batch` slices, the last one padded with zero
  slices (one shape: one compile for the StableHLO artifact)."""
  out = []
  for start in range(0, len(slices), batch):
    chunk = slices[start : start + batch]
    padded = np.zeros((batch, *slices.shape[1:]), np.float32)
    padded[: len(chunk)] = chunk
    out.append(run(padded)[: len(chunk)])
  return np.concatenate(out)


def _probabilities(logits: np.ndarray) -> np.ndarray:
  """[..., K] -> sigmoid [...] (K = 1) or softmax [..., K]."""
  logits = logits.astype(np.float32)
  if logits.shape[-1] == 1:
    return 1 / (1 + np.exp(-logits[..., 0]))
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def segment(
  contract: dict, channels: list[nib.Nifti1Image], run: Run, batch: int = 8
) -> Segmentation:
  """One case (its channels' images) through one runtime, as the contract says."""
  slices, record = volumes.preprocess_image(channels, contract_lib.data_settings(contract))
  run(np.zeros((batch, *slices.shape[1:]), np.float32))  # compiles: not in `seconds`
  start = time.perf_counter()
  views = [_logits(run, slices, batch)]
  if contract['output']['tta_flip']:
    views.append(_logits(run, slices[:, :, ::-1], batch))
  seconds = time.perf_counter() - start
  prob = _probabilities(views[0])
  if len(views) == 2:
    prob = 0.5 * (prob + _probabilities(views[1])[:, :, ::-1])
  values = np.asarray(contract['output']['label_values'])
  labels = label_map(prob, record, contract_lib.eval_settings(contract), values)
  return Segmentation(views, labels, seconds)
