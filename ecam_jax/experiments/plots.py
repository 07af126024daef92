"""The table's PNGs (matplotlib, Agg): ours against the paper per row, Fig. 4's DSC against
alpha, and each row's validation DSC over training (from its metrics.jsonl)."""

import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from ecam_jax.atomic import atomic_path  # noqa: E402


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format='png', dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def _values(result: dict, key: str) -> list[float]:
  return [r['metrics']['dsc'][key] for r in result['rows']]


def comparison(result: dict, path: pathlib.Path) -> pathlib.Path:
  """Grouped bars of the DSC per row: ours (per slice, with the std over seeds) and the
  paper's; a row without a value has no bar. For Fig. 4, lines over alpha instead."""
  if result['table'] == 'fig4':
    return _alpha_curve(result, path)
  labels = [r['label'] for r in result['rows']]
  ours = [v if v is not None else 0 for v in _values(result, 'ours')]
  errors = [v or 0 for v in _values(result, 'ours_std')]
  paper = [v if v is not None else 0 for v in _values(result, 'paper')]
  x = range(len(labels))
  fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 2), 4))
  ax.bar([i - 0.2 for i in x], ours, 0.4, yerr=errors, label='ours (per slice)')
  if result['paper_column']:
    ax.bar([i + 0.2 for i in x], paper, 0.4, label=f'paper ({result["paper_column"]})')
  for i, row in enumerate(result['rows']):
    if row['metrics']['dsc']['ours'] is None:
      ax.text(i - 0.2, 1, row['status'], rotation=90, ha='center', va='bottom', fontsize=7)
  ax.set_xticks(list(x), labels, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel('test DSC (%)')
  ax.set_ylim(0, 100)
  ax.set_title(result['title'], fontsize=9)
  ax.legend(fontsize=8)
  return _save(fig, path)


def _alpha_curve(result: dict, path: pathlib.Path) -> pathlib.Path:
  alphas = [r['overrides']['loss.alpha'] for r in result['rows']]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for key, label, style in (('ours', 'ours (per slice)', 'o-'), ('paper', 'paper', 's--')):
    points = [(a, v) for a, v in zip(alphas, _values(result, key), strict=True) if v is not None]
    if points:
      ax.plot(*zip(*points, strict=True), style, label=label)
  ax.set_xlabel('alpha (eq. 17: alpha Dice + (1 - alpha) BCE)')
  ax.set_ylabel('test DSC (%)')
  ax.set_title(result['title'], fontsize=8)
  ax.legend(fontsize=8)
  return _save(fig, path)


def validation_curves(result: dict, workdir: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
  """One line per run: its validation DSC (per volume, what selects the best checkpoint)
  against the training step."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in result['rows']:
    for folder in row['folders']:
      metrics = pathlib.Path(workdir) / folder / 'metrics.jsonl'
      if not metrics.is_file():
        continue
      records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
      # A resumed run logs again the steps after its last checkpoint: the later line wins.
      val = sorted({r['step']: r['dsc'] for r in records if r['kind'] == 'val'}.items())
      val = [(step, dsc) for step, dsc in val if dsc is not None]
      if val:
        ax.plot(*zip(*val, strict=True), marker='.', label=pathlib.Path(folder).name)
  ax.set_xlabel('step')
  ax.set_ylabel('validation DSC (per volume)')
  ax.set_title(result['title'], fontsize=8)
  if ax.lines:
    ax.legend(fontsize=7)
  return _save(fig, path)
