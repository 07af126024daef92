"""The launch scripts, as dry runs: the commands they would run."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dry(script, *args, **env):
  run = subprocess.run(
    ['bash', f'launch/{script}', *args],
    cwd=ROOT,
    env=dict(os.environ, **env),
    capture_output=True,
    text=True,
    timeout=30,
  )
  assert run.returncode == 0, run.stderr
  return run.stdout.strip().splitlines()


def test_local_multiprocess_cpu_and_gpu():
  lines = _dry(
    'local_multiprocess.sh',
    '-n',
    '3',
    '-d',
    '2',
    '--port',
    '4321',
    '--dry-run',
    '--',
    '--config=configs/demo.py',
    '--workdir=runs/a b',
  )
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert 'XLA_FLAGS=--xla_force_host_platform_device_count=2' in line
    assert '--coordinator_address=127.0.0.1:4321 --num_processes=3' in line
    assert f'--process_id={i} ' in line and line.endswith(r'--workdir=runs/a\ b')
  gpus = _dry('local_multiprocess.sh', '-n', '2', '-d', '4', '--gpus', '--dry-run', '--', '--x=1')
  assert gpus[0].startswith('CUDA_VISIBLE_DEVICES=0,1,2,3 ')
  assert gpus[1].startswith('CUDA_VISIBLE_DEVICES=4,5,6,7 ')


def test_slurm_runs_one_task_per_gpu_and_stops_all_on_failure():
  (_, command) = _dry('slurm.sbatch', '--dry-run', '--config=configs/msd.py', '--workdir=/w')
  assert command.startswith('srun --kill-on-bad-exit=1 --ntasks-per-node=8 ')
  assert '-m ecam_jax.main --config=configs/msd.py --workdir=/w' in command
  header = (ROOT / 'launch' / 'slurm.sbatch').read_text()
  assert '#SBATCH --signal=TERM@300' in header and '#SBATCH --gpus-per-node=8' in header


def test_tpu_pod_runs_on_every_worker():
  env = dict(TPU_NAME='pod', ZONE='us-east5-a', PROJECT='proj')
  (command,) = _dry(
    'tpu_pod.sh', '--dry-run', '--', '--config=configs/msd.py', '--workdir=/mnt/w', **env
  )
  assert command.startswith('gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --project=proj')
  assert '--worker=all' in command and 'ecam_jax.main\\ --distributed=on' in command
  setup = _dry('tpu_pod.sh', '--dry-run', '--setup', **env)
  assert setup[0].startswith('gcloud compute tpus tpu-vm scp --recurse')
  assert 'jax\\[tpu\\]' in setup[1]


def test_slurm_table_array_task_runs_its_share_of_the_rows():
  args = ('--dry-run', '--table=2', '--config=configs/msd.py', '--workdir=/w')
  env = dict(SLURM_ARRAY_TASK_ID='4', SLURM_ARRAY_TASK_MIN='1', SLURM_ARRAY_TASK_COUNT='10')
  (note, command) = _dry('slurm_table.sbatch', *args, **env)
  assert note == '# array task 3 of 10'
  assert command.startswith('srun --kill-on-bad-exit=1 --ntasks-per-node=2 ')
  assert command.endswith(
    '-m ecam_jax.experiments --table=2 --config=configs/msd.py --workdir=/w --shard=3/10'
  )
  (_, alone) = _dry('slurm_table.sbatch', *args)
  assert alone.endswith('--shard=0/1')
  header = (ROOT / 'launch' / 'slurm_table.sbatch').read_text()
  assert '#SBATCH --signal=TERM@300' in header and '#SBATCH --requeue' in header
