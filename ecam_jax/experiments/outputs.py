"""Everything a table writes into WORKDIR: the table files and its plots (Tables I-V,
Fig. 4), or the Grad-CAM grid (Fig. 5)."""

import pathlib

from ecam_jax.experiments import plots, report, runner
from ecam_jax.experiments.tables import Table


def write_outputs(table: Table, workdir: pathlib.Path, plan: dict) -> list[pathlib.Path]:
  """Writes the table's outputs from the runs finished so far; returns their paths.
  `plan`: {'dataset', 'paper_column', 'seeds', 'folds'}."""
  workdir = pathlib.Path(workdir)
  stem = runner.table_dir(workdir, table).name
  if table.name == 'fig5':
    from ecam_jax.experiments import gradcam

    return [gradcam.write_grid(table, workdir, workdir / f'{stem}.png')]
  result = report.collect(
    table,
    workdir,
    plan['paper_column'],
    plan['seeds'],
    dataset=plan['dataset'],
    folds=plan.get('folds', 0),
  )
  result['paper_column_forced'] = bool(plan.get('forced'))
  paths = report.write(result, workdir, stem)
  paths.append(plots.comparison(result, workdir / f'{stem}.png'))
  paths.append(plots.validation_curves(result, workdir, workdir / f'{stem}_val_dsc.png'))
  return paths
