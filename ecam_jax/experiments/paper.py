"""The paper's own numbers (paper_results.json, package data) and which of its four
datasets a config's `data.dataset` is."""

import functools
import importlib.resources
import json

# config.data.dataset (configs/*.py) -> the paper's dataset column.
DATASETS = {
  'tcia_pancreas': 'tcia',
  'msd_pancreas': 'msd',
  'kits19': 'kits',
  'msd_heart': 'cardiac',
}
COLUMNS = ('tcia', 'msd', 'kits', 'cardiac')


@functools.cache
def results() -> dict:
  """paper_results.json: {'tables': {table: {row: {dataset: {metric: percent or None}}}},
  'datasets', 'errata', 'source'}."""
  text = importlib.resources.files(__package__).joinpath('paper_results.json').read_text()
  return json.loads(text)


def column(dataset: str) -> str | None:
  """The paper's dataset column for config.data.dataset (or a column name itself), or
  None when the paper has no such dataset (the phantom, a custom one)."""
  if dataset in COLUMNS:
    return dataset
  return DATASETS.get(dataset)


def value(table: str, row: str, dataset: str, metric: str) -> float | None:
  """The paper's value in percent, or None where it prints none (or it is unreadable)."""
  cell = results()['tables'].get(table, {}).get(row, {}).get(dataset, {})
  return cell.get(metric)


def errata() -> list[dict[str, str]]:
  """The paper's inconsistencies as we read them: [{'where', 'note'}]."""
  return results()['errata']
