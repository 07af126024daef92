"""The paper's experiments, one command per table:

  python -m ecam_jax.experiments --table=2 --config=configs/msd.py --workdir=runs/paper/msd \
      --config.data.root=/data/Task07_Pancreas [--rows=unet,ec_cam_unet] [--seeds=3] [--folds=5]
      [--dry_run]
  python -m ecam_jax.experiments --table=2 --workdir=runs/paper/msd --collect

Each row trains in WORKDIR/<table>/<row> as `ecam_jax.main` would with
`--config=FILE:variant=<the row's variant>` and the same overrides (plus the row's own,
e.g. Table IV's loss weights), is evaluated on the test split, and the table is written to
WORKDIR/<table>.{md,csv,json} with PNG plots. Rerunning skips finished rows and resumes
interrupted ones. --shard=i/n (or --rows) splits the runs (--dry_run lists them: a row,
each seed of a row with --seeds, each fold of each with --folds) between runners, e.g. the
tasks of a SLURM job array (launch/slurm_table.sbatch); --collect only writes the table.
"""

import json
import logging
import os
import pathlib
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from ecam_jax import configuration, parallel
from ecam_jax.atomic import write_json_atomic
from ecam_jax.configuration import load_config
from ecam_jax.errors import CheckpointError, ConfigError, DataError
from ecam_jax.experiments import paper, runner, tables
from ecam_jax.experiments.outputs import write_outputs

FLAGS = flags.FLAGS
flags.DEFINE_string('table', None, "The table: 1..5 (or I..V), 'fig4' or 'fig5'.")
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py), no :variant=.')
flags.DEFINE_string('workdir', None, 'Where the rows, the tables and the plots go.')
flags.DEFINE_string('rows', '', 'Comma-separated row ids to run (default: all of the table).')
flags.DEFINE_string(
  'shard', '', 'i/n: run the i-th of every n selected runs (0-based; --dry_run lists the runs).'
)
flags.DEFINE_integer('seeds', 0, '> 0: each row runs N times, ROW_seed0..N-1, config.seed = k.')
flags.DEFINE_integer(
  'folds',
  0,
  '> 1: each row is a cross-validation of N folds (ROW/fold_K, config.data.fold = K), scored '
  'out of fold over every training case into ROW/crossval.',
)
flags.DEFINE_bool('dry_run', False, 'List the rows, their variants and folders; train nothing.')
flags.DEFINE_bool('collect', False, 'Only write the table from the rows finished so far.')
flags.DEFINE_string(
  'paper_dataset',
  '',
  "Compare with this column of the paper (tcia, msd, kits, cardiac) whatever the config's "
  'data.dataset (the table says so).',
)
flags.DEFINE_bool(
  'resume_with_changes',
  False,
  "Resume rows although the config differs from their checkpoint's (as ecam_jax.main).",
)
flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: how many processes in all.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process (0 .. n-1).')
flags.DEFINE_enum(
  'distributed', 'auto', ['auto', 'on', 'off'], 'Multi-process start, as ecam_jax.main.'
)
flags.mark_flags_as_required(['table', 'workdir'])

# A user's mistake in one row (a config its checkpoint refuses, a data error): that row
# fails with its message in ROW/error.txt and the other rows go on.
ROW_ERRORS = (ConfigError, DataError, CheckpointError)
PLAN = 'plan.json'


def _config_for(variant: str, recipe: str = 'paper'):
  """The config `ecam_jax.main --config=FILE:variant=<variant>,recipe=<recipe> <overrides>`
  would use."""
  path, _, arg = config_flags.get_config_filename(FLAGS['config']).partition(':')
  if arg:
    raise app.UsageError(f"--config={path}:{arg}: the table sets each row's variant; drop :{arg}")
  config = load_config(path, f'variant={variant},recipe={recipe}')
  for key, value in config_flags.get_override_values(FLAGS['config']).items():
    *parents, name = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[name] = value
  return config


def _plan(table: tables.Table, workdir: pathlib.Path) -> dict:
  """What --collect needs to know about the run (dataset, compared column, seeds): from the
  flags when a config is given, else from the plan the runner wrote."""
  path = runner.table_dir(workdir, table) / PLAN
  if FLAGS['config'].present:
    dataset = _config_for('unet').data.dataset
    plan = {'dataset': dataset, 'seeds': FLAGS.seeds, 'paper_column': paper.column(dataset)}
  elif path.is_file():
    plan = json.loads(path.read_text())
  else:
    plan = {'dataset': '', 'seeds': FLAGS.seeds, 'paper_column': None}
  for name in ('seeds', 'folds'):
    if FLAGS[name].present or name not in plan:
      plan[name] = FLAGS[name].value
  if plan['folds'] == 1 or plan['folds'] < 0:
    raise app.UsageError(f'--folds={plan["folds"]}; expected 0 (no folds) or at least 2')
  if FLAGS.paper_dataset:
    if FLAGS.paper_dataset not in paper.COLUMNS:
      raise app.UsageError(f'--paper_dataset={FLAGS.paper_dataset!r}; one of {paper.COLUMNS}')
    plan['paper_column'] = FLAGS.paper_dataset
    plan['forced'] = True  # the table says the column was chosen, not the config's dataset
  return plan


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for name in ('absl', 'jax'):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    _main()
  except ROW_ERRORS as e:  # before any row started: the config file, the data, the phantom
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def _main() -> None:
  workdir = pathlib.Path(FLAGS.workdir).absolute()
  if not FLAGS.collect and not FLAGS['config'].present:
    raise app.UsageError('--config is required unless --collect')
  try:
    table = tables.get(FLAGS.table)
    plan = _plan(table, workdir)
    rows = tables.select(table, FLAGS.rows)
    chosen = runner.shard(
      runner.runs(table, rows, workdir, plan['seeds'], plan['folds']), FLAGS.shard
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.dry_run:
    for line in runner.listing(table, chosen):
      print(line)
    return
  if FLAGS.collect:
    return _write(table, workdir, plan)
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):  # shared by every row of the workdir
    jax.config.update('jax_compilation_cache_dir', str(workdir / '.xla_cache'))
  parallel.initialize(
    FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, mode=FLAGS.distributed
  )
  if jax.process_index() == 0:
    write_json_atomic(runner.table_dir(workdir, table) / PLAN, plan)
  outcomes = runner.run_table(
    table, chosen, _config_for, workdir, ROW_ERRORS, allow_changes=FLAGS.resume_with_changes
  )
  if jax.process_index() == 0:
    _write(table, workdir, plan)
  failed = [o for o in outcomes if o.action == runner.FAILED]
  for outcome in failed:
    print(f'error: {outcome.name}: {outcome.error}', file=sys.stderr, flush=True)
  if failed:
    sys.exit(1)


def _write(table, workdir, plan) -> None:
  for path in write_outputs(table, workdir, plan):
    print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=configuration.parse_flags)
