"""Entry point: python -m ecam_jax.main --config=configs/msd.py --workdir=runs/msd

Modes: train (default; resumes when the workdir has a checkpoint), prepare (build the
preprocessing cache only), eval (score the best checkpoint on the test split), crossval
(score the folds trained in WORKDIR/fold_K on their own validation cases, together),
predict (segment NIfTI files) and export (ONNX and StableHLO for deployment,
docs/export.md). eval and predict with --folds=0,1,2,3,4 use the ensemble of
WORKDIR/fold_0 ... (their probabilities averaged).
Config values are overridden as --config.train.batch_size=8. Intentionally thin: the work
lives in train.py / infer.py.
"""

import logging
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from ecam_jax import configuration, parallel
from ecam_jax.errors import USER_ERRORS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs, cache and results go.')
flags.DEFINE_enum(
  'mode', 'train', ['train', 'prepare', 'eval', 'crossval', 'predict', 'export'], 'What to run.'
)
flags.DEFINE_list(
  'folds',
  [],
  'eval/predict: the ensemble of these folds, trained in WORKDIR/fold_K (e.g. 0,1,2,3,4).',
)
flags.DEFINE_string('input', None, 'predict: a NIfTI file or a folder of them.')
flags.DEFINE_string(
  'output', None, 'predict: the output file or folder; export: the folder (WORKDIR/export).'
)
flags.DEFINE_string(
  'checkpoint', None, "eval/predict/export: 'best', 'latest' or a checkpoint path."
)
flags.DEFINE_bool('onnx_float16', False, 'export: also write model.float16.onnx.')
flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: how many processes in all.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process (0 .. n-1).')
flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'on', 'off'],
  'Multi-process start: auto (SLURM, Open MPI, TPU pod detected), on (always), off.',
)
flags.DEFINE_integer(
  'heartbeat_timeout_seconds', 60, 'Multi-process: declare a silent process dead after this.'
)
flags.DEFINE_bool(
  'resume_with_changes',
  False,
  "train: resume although the config differs from the checkpoint's (not the network); the "
  'run continues under the new values from where it stopped (see README, Resume).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for name in ('absl', 'jax'):  # absl.app logs INFO to the console, e.g. jax's TPU probe
    logging.getLogger(name).setLevel(logging.WARNING)
  workdir = os.path.abspath(FLAGS.workdir)  # orbax, and the paths in config.json, need it
  # A rerun (resume after preemption, eval after train) reuses compiled programs.
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, '.xla_cache'))
  parallel.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    mode=FLAGS.distributed,
    heartbeat_timeout_s=FLAGS.heartbeat_timeout_seconds,
  )
  try:
    _run(FLAGS.config, workdir)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    raise RuntimeError(
      f'process {jax.process_index()} of {jax.process_count()}: an exchange with the other '
      'processes failed; another process of this run has probably died (see its log). Run '
      f'the same command again to resume from the latest checkpoint. ({str(e).splitlines()[0]})'
    ) from e


def _run(config, workdir: str) -> None:
  if FLAGS.mode == 'train':
    from ecam_jax import train

    summary = train.train_and_evaluate(config, workdir, allow_changes=FLAGS.resume_with_changes)
    parallel.print0(f'done: {summary}')
  elif FLAGS.mode == 'prepare':
    from ecam_jax.data import prepare

    prepare.prepare_data(config, prepare.prepare_workdir(workdir))
  elif FLAGS.mode == 'eval':
    from ecam_jax import evaluate

    which = FLAGS.checkpoint or config.eval.checkpoint
    evaluate.evaluate_split(config, workdir, which, members=_members(workdir))
  elif FLAGS.mode == 'crossval':
    from ecam_jax import evaluate

    evaluate.evaluate_folds(config, workdir, FLAGS.checkpoint or config.eval.checkpoint)
  elif FLAGS.mode == 'export':
    from ecam_jax.export import folder

    if FLAGS.folds:
      raise app.UsageError(
        '--mode=export packages one model, not an ensemble of folds: export each fold with '
        '--workdir=WORKDIR/fold_K (and average their probabilities, as --folds does)'
      )
    which = FLAGS.checkpoint or config.eval.checkpoint
    path = folder.export(config, workdir, which, FLAGS.output, float16=FLAGS.onnx_float16)
    parallel.print0(f'exported to {path}')
  else:
    from ecam_jax import infer

    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError('--mode=predict needs --input=FILE_OR_DIR and --output=FILE_OR_DIR')
    which = FLAGS.checkpoint or config.eval.checkpoint
    runs = _members(workdir) or workdir
    infer.predict_paths(config, runs, FLAGS.input, FLAGS.output, which)


def _members(workdir: str) -> list[str]:
  """WORKDIR/fold_K for each K of --folds (none without it)."""
  for fold in FLAGS.folds:
    if not fold.isdigit():
      raise app.UsageError(f'--folds={",".join(FLAGS.folds)}: expected fold numbers like 0,1,2')
  return [os.path.join(workdir, f'fold_{fold}') for fold in FLAGS.folds]


if __name__ == '__main__':
  app.run(main, flags_parser=configuration.parse_flags)
