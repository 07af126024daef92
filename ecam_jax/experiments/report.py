"""A table's results beside the paper's: WORKDIR/<table>.{json,csv,md}.

Our value of a metric is the test split's mean over cases of the per-slice score (the
paper: "we evaluate the performance of the model on CT slice"); the per-volume mean is
reported beside it. A multi-class run's values are the mean over its classes, and each
class's and region's are listed apart (`per_class`); the paper's numbers are binary.
With several seeds a row shows mean ± sample std over its seeds. A row trained in folds
(--folds) shows its out-of-fold score over all training cases ± the sample std over its
folds (each fold's mean over its own validation cases).
Each row is compared with the table's reference row per case (Wilcoxon signed-rank on the
per-case per-slice DSC, averaged over seeds first), which the paper does not report.
"""

import csv
import io
import json
import pathlib
import re

import numpy as np
from scipy import stats

from ecam_jax.atomic import write_text_atomic
from ecam_jax.experiments import paper, runner
from ecam_jax.experiments.tables import TABLES, Row, Table

METRIC_NAMES = {'dsc': 'DSC', 'sensitivity': 'Sensitivity', 'precision': 'Precision'}
# Fewer paired cases than this and the test can hardly reach p < 0.05.
UNDERPOWERED = 6


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (ddof 1; None with one value or none)."""
  finite = [v for v in values if v is not None and np.isfinite(v)]
  if not finite:
    return None, None
  return float(np.mean(finite)), (float(np.std(finite, ddof=1)) if len(finite) > 1 else None)


def case_means(summaries: list[dict], key: str = 'slice_dsc') -> dict[str, float]:
  """Case id -> the mean of `key` over the runs (seeds) that scored it finitely."""
  values: dict[str, list[float]] = {}
  for summary in summaries:
    for case, scores in summary['cases'].items():
      if scores.get(key) is not None and np.isfinite(scores[key]):
        values.setdefault(case, []).append(float(scores[key]))
  return {case: float(np.mean(v)) for case, v in values.items()}


def wilcoxon(ours: dict[str, float], reference: dict[str, float]) -> dict:
  """Wilcoxon signed-rank test of the per-case scores paired by case id: {'n' (pairs),
  'p', 'statistic', 'median_diff' (ours - reference, in points), 'note'}."""
  cases = sorted(set(ours) & set(reference))
  diff = np.array([ours[c] - reference[c] for c in cases])
  out = {'n': len(cases), 'p': None, 'statistic': None, 'note': ''}
  out['median_diff'] = float(np.median(diff) * 100) if len(cases) else None
  if not cases or not np.any(diff):
    out['note'] = 'no paired cases' if not cases else 'identical per-case scores'
    return out
  result = stats.wilcoxon(diff)
  out.update(p=float(result.pvalue), statistic=float(result.statistic))
  if len(cases) < UNDERPOWERED:
    out['note'] = f'underpowered: {len(cases)} paired case' + ('s' if len(cases) > 1 else '')
  return out


def _summary(row_dir: pathlib.Path) -> dict:
  return json.loads(runner.summary_path(row_dir).read_text())


def _budget(row_dir: pathlib.Path) -> dict | None:
  """The training budget a run's config.json (or its first fold's) records."""
  for folder in (row_dir, row_dir / 'fold_0'):
    path = folder / 'config.json'
    if path.is_file():
      train = json.loads(path.read_text())['train']
      return {'epochs': train['epochs'], 'batch_size': train['batch_size']}
  return None


def _spread(done: list[dict], key: str) -> list[float | None]:
  """The values whose sample std a row reports beside its mean: one per seed, or for a
  single cross-validation one per fold (the mean of `key` over the fold's own cases)."""
  if len(done) == 1 and 'folds' in done[0]:
    cases = done[0]['cases']
    return [
      _pct(mean_std([cases[c].get(key) for c in fold['cases']])[0]) for fold in done[0]['folds']
    ]
  return [_pct(s['mean'][key]) for s in done]


def _pct(value) -> float | None:
  return None if value is None or not np.isfinite(value) else float(value) * 100


def _reference_runs(
  workdir: pathlib.Path, table: Table, seeds: int
) -> tuple[list[dict], str | None]:
  """The reference row's summaries: this table's, else a finished run of the same variant
  and overrides in another table's folder. Returns (summaries, where)."""
  ref = table.row(table.reference)
  places = [(table, ref)] + [
    (other, row)
    for other in TABLES.values()
    if other.name != table.name
    for row in other.rows
    if (row.variant, row.overrides) == (ref.variant, ref.overrides)
  ]
  for where_table, row in places:
    dirs = [
      runner.source_dir(workdir, where_table, row, name) for name, _ in runner.run_names(row, seeds)
    ]
    done = [d for d in dirs if runner.state_of(d) == runner.FINISHED]
    if done:
      return [_summary(d) for d in done], f'{runner.table_dir(workdir, where_table).name}/{row.id}'
  return [], None


def _row_status(states: list[str], available: bool) -> str:
  if not available:
    return runner.UNAVAILABLE
  if all(s == runner.FINISHED for s in states):
    return runner.FINISHED
  for state in (runner.RUNNING, runner.FAILED, runner.INTERRUPTED):
    if state in states:
      return state
  return 'pending' if runner.FINISHED not in states else 'partial'


def collect(
  table: Table,
  workdir: pathlib.Path,
  column: str | None,
  seeds: int = 0,
  dataset: str = '',
  folds: int = 0,
) -> dict:
  """Everything the table files hold, from the rows' folders: per row its status, our
  values (per slice and per volume, mean ± std over seeds), the paper's (`column`: the
  paper's dataset column, None for none), the difference, and the paired test against the
  reference row."""
  workdir = pathlib.Path(workdir)
  ref_runs, ref_where = _reference_runs(workdir, table, seeds)
  ref_cases = case_means(ref_runs)
  rows = []
  for row in table.rows:
    rows.append(_collect_row(table, row, workdir, column, seeds, ref_cases, ref_where))
  return {
    'table': table.name,
    'title': table.title,
    'dataset': dataset,
    'paper_column': column,
    'compared': 'per-slice mean (the paper evaluates on CT slices); per-volume beside it',
    'seeds': seeds,
    'folds': folds,
    'reference': {'row': table.reference, 'from': ref_where},
    'metrics': list(table.metrics),
    'rows': rows,
    'errata': paper.errata(),
  }


def _collect_row(table, row: Row, workdir, column, seeds, ref_cases, ref_where) -> dict:
  runs = runner.run_names(row, seeds)
  dirs = [runner.source_dir(workdir, table, row, name) for name, _ in runs]
  states = [runner.state_of(d) for d in dirs]
  done = [_summary(d) for d, s in zip(dirs, states, strict=True) if s == runner.FINISHED]
  out = {
    'id': row.id,
    'label': row.label,
    'variant': row.variant,
    'recipe': row.recipe,
    'in_paper': row.in_paper,
    'budget': _budget(dirs[0]),
    'overrides': dict(row.overrides),
    'status': _row_status(states, runner.available(row)),
    'runs': {d.name: s for d, s in zip(dirs, states, strict=True)},
    'folders': [str(d.relative_to(workdir)) for d in dirs],
    'finished_runs': len(done),
    'metrics': {},
  }
  for metric in ('dsc', 'sensitivity', 'precision'):
    slice_mean = mean_std([_pct(s['mean'][f'slice_{metric}']) for s in done])[0]
    volume_mean = mean_std([_pct(s['mean'][metric]) for s in done])[0]
    slice_std = mean_std(_spread(done, f'slice_{metric}'))[1]
    volume_std = mean_std(_spread(done, metric))[1]
    theirs = paper.value(table.name, row.id, column, metric) if column else None
    out['metrics'][metric] = {
      'ours': slice_mean,
      'ours_std': slice_std,
      'per_volume': volume_mean,
      'per_volume_std': volume_std,
      'paper': theirs,
      'diff': None if slice_mean is None or theirs is None else slice_mean - theirs,
    }
  names = [name for name in done[0].get('classes', {})] if done else []
  if names:  # several classes: each class's and region's scores, as the headline ones
    out['per_class'] = {
      name: {
        metric: dict(
          zip(
            ('ours', 'ours_std', 'per_volume', 'per_volume_std'),
            mean_std([_pct(s['classes'][name]['mean'][f'slice_{metric}']) for s in done])
            + mean_std([_pct(s['classes'][name]['mean'][metric]) for s in done]),
            strict=True,
          )
        )
        for metric in METRIC_NAMES
      }
      for name in names
    }
  if done and ref_where and row.id != table.reference:
    out['wilcoxon'] = wilcoxon(case_means(done), ref_cases)
  return out


def _num(value: float | None, std: float | None = None) -> str:
  if value is None:
    return '–'
  return f'{value:.2f}' if std is None else f'{value:.2f} ± {std:.2f}'


def markdown(result: dict) -> str:
  """The table as Markdown: a header saying what is compared, then one line per row."""
  column = result['paper_column']
  metrics = result['metrics']
  lines = [f'# {result["title"]}', '']
  if column:
    forced = (
      ' (chosen by --paper_dataset: the paper measured another dataset)'
      if result.get('paper_column_forced')
      else ''
    )
    lines.append(f'Dataset: {result["dataset"] or column}; paper column: {column}{forced}.')
  else:
    lines.append(f'paper: n/a (dataset {result["dataset"]!r} is not in the paper).')
  where = (
    f'out of fold: every training case scored by the one of {result["folds"]} folds that '
    'did not train on it'
    if result.get('folds')
    else 'test split'
  )
  spread = ' Mean ± std over the seeds.' if result['seeds'] else ''
  if result.get('folds') and not result['seeds']:
    spread = ' ± the std over the folds (each fold: the mean over its own cases).'
  lines += [
    f'Ours: {where}, mean over cases of the per-slice score, in percent (compared with the '
    "paper, which scores CT slices); per volume: the mean over cases of each case's 3-D "
    'score.' + spread,
    f'Paired test: Wilcoxon signed-rank on per-case per-slice DSC against '
    f'`{result["reference"]["row"]}` (from {result["reference"]["from"] or "no finished run"}).',
    '',
  ]
  budgets = {json.dumps(r['budget']) for r in result['rows'] if r.get('budget')}
  if budgets:
    lines.insert(
      -1,
      'Training budget: '
      + '; '.join(
        f'{b["epochs"]} epochs at a global batch of {b["batch_size"]}'
        for b in map(json.loads, sorted(budgets))
      )
      + (' for every row, whatever its recipe.' if len(budgets) == 1 else ' (rows differ).'),
    )
  added = [r for r in result['rows'] if not r.get('in_paper', True)]
  if added:
    lines.insert(-1, '† Not in the paper: added by this project.')
  lines.insert(
    -1, "Recipe: the config's, the paper's unless a row names another (ecam_jax/recipes.py)."
  )
  header = ['row', 'status']
  for m in metrics:
    name = METRIC_NAMES[m]
    header += [f'{name} ours', f'{name} paper', 'Δ']
  header += ['DSC per volume', 'vs reference: n, p']
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in result['rows']:
    label = row['label']
    if row.get('recipe', 'paper') != 'paper':
      label += f' ({row["recipe"]} recipe)'
    cells = [label + ('' if row.get('in_paper', True) else ' †'), row['status']]
    for m in metrics:
      v = row['metrics'][m]
      diff = '–' if v['diff'] is None else f'{v["diff"]:+.2f}'
      cells += [_num(v['ours'], v['ours_std']), _num(v['paper']), diff]
    dsc = row['metrics']['dsc']
    cells.append(_num(dsc['per_volume'], dsc['per_volume_std']))
    cells.append(_wilcoxon_cell(row.get('wilcoxon')))
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += _per_class_markdown(result)
  notes = [e for e in result['errata'] if column and _about(e['where'], result['table'])]
  if notes:
    lines += ['', "The paper's numbers as printed; what we noticed in them:", '']
    lines += [f'- {e["where"]}: {e["note"]}' for e in notes]
  return '\n'.join(lines) + '\n'


def _per_class_markdown(result: dict) -> list[str]:
  """With several classes: each row's DSC per class and region (per slice, then per volume),
  beside the headline values (their mean over the classes; the paper's are binary)."""
  names = list(dict.fromkeys(n for row in result['rows'] for n in row.get('per_class', {})))
  if not names:
    return []
  lines = [
    '',
    'DSC of each class and region (per slice; per volume in brackets). The values above are '
    "their mean over the classes; the paper's numbers are of one merged foreground.",
    '',
    '| row | ' + ' | '.join(names) + ' |',
    '|' + '---|' * (len(names) + 1),
  ]
  for row in result['rows']:
    cells = []
    for name in names:
      v = row.get('per_class', {}).get(name, {}).get('dsc')
      cells.append(
        '–' if v is None else f'{_num(v["ours"], v["ours_std"])} ({_num(v["per_volume"])})'
      )
    lines.append(f'| {row["label"]} | ' + ' | '.join(cells) + ' |')
  return lines


def _about(where: str, table: str) -> bool:
  """Whether an erratum's `where` names `table` ('1'..'5', 'fig4')."""
  if table == 'fig4':
    return 'Fig. 4' in where
  roman = ('I', 'II', 'III', 'IV', 'V')[int(table) - 1]
  return re.search(rf'Tables? (?:[IV]+ and )?{roman}\b', where) is not None


def _wilcoxon_cell(test: dict | None) -> str:
  if not test:
    return '–'
  if test['p'] is None:
    return f'n={test["n"]}: {test["note"]}'
  note = f' ({test["note"]})' if test['note'] else ''
  return f'n={test["n"]}, p={test["p"]:.3g}{note}'


def csv_text(result: dict) -> str:
  """One line per row and metric: ours (mean, std), per volume, paper, difference, test."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(
    ['row', 'label', 'status', 'metric', 'ours', 'ours_std', 'per_volume', 'per_volume_std']
    + ['paper', 'diff', 'finished_runs', 'wilcoxon_n', 'wilcoxon_p']
  )
  for row in result['rows']:
    test = row.get('wilcoxon') or {}
    for metric in result['metrics']:
      v = row['metrics'][metric]
      writer.writerow(
        [row['id'], row['label'], row['status'], metric, v['ours'], v['ours_std']]
        + [v['per_volume'], v['per_volume_std'], v['paper'], v['diff'], row['finished_runs']]
        + [test.get('n', ''), test.get('p', '')]
      )
    for name, scores in row.get('per_class', {}).items():
      for metric in result['metrics']:
        v = scores[metric]
        writer.writerow(
          [row['id'], row['label'], row['status'], f'{metric}/{name}', v['ours'], v['ours_std']]
          + [v['per_volume'], v['per_volume_std'], '', '', row['finished_runs'], '', '']
        )
  return out.getvalue()


def write(result: dict, workdir: pathlib.Path, stem: str) -> list[pathlib.Path]:
  """WORKDIR/<stem>.{json,csv,md}, each written whole or not at all."""
  paths = [pathlib.Path(workdir) / f'{stem}.{ext}' for ext in ('json', 'csv', 'md')]
  texts = [json.dumps(result, indent=1), csv_text(result), markdown(result)]
  for path, text in zip(paths, texts, strict=True):
    write_text_atomic(path, text)
  return paths
