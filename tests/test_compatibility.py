"""What earlier code wrote, today's code reads (tests/fixtures/README.md says how each
fixture was made): every variant's parameter tree, a checkpoint's predictions, a stopped
run resumed to the numbers the uninterrupted run logged, and stored configs in the layout
from before each network's options moved into config.model alone."""

import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from ecam_jax import infer, resume, train
from ecam_jax.configuration import load_config
from ecam_jax.data import phantom
from ecam_jax.models.build import abstract_variables, build_model

import tiny_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
RUN = FIXTURES / 'checkpoint_da1b17d'
SIDES = ('bottleneck', 'decoder1', 'decoder2', 'decoder3')


def _fingerprint(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  lines = sorted(f'{jax.tree_util.keystr(p)} {tuple(x.shape)} {x.dtype}' for p, x in flat)
  digest = hashlib.sha256('\n'.join(lines).encode()).hexdigest()
  return {'leaves': len(lines), 'size': int(sum(x.size for _, x in flat)), 'sha256': digest}


def _tree_config(key: str):
  """'variant:option=value,flag' (the fixture's key) -> that config at base 4."""
  variant, _, changes = key.removesuffix(':folded').partition(':')
  config = load_config(ROOT / 'configs/default.py', f'variant={variant}')
  if 'base_channels' in config.model:
    config.model.base_channels = 4
  for item in filter(None, changes.split(',')):
    name, _, value = item.partition('=')
    if name == 'side_outputs':
      config.model[name] = SIDES
    elif not value:
      config.model[name] = True
    else:
      config.model[name] = type(config.model[name])(value) if value != 'False' else False
  return config


TREES = json.loads((FIXTURES / 'parameter_trees.json').read_text())


@pytest.mark.parametrize('key', sorted(TREES))
def test_parameter_trees_are_the_ones_earlier_code_built(key):
  config = _tree_config(key)
  model = build_model(config.model, folded=key.endswith(':folded'))
  assert _fingerprint(abstract_variables(model, 64)) == TREES[key]


def test_a_checkpoint_written_earlier_gives_the_same_predictions(tmp_path):
  """The tiny run's best (step 8) and latest (step 12) checkpoints, restored by today's code
  into today's network, predict what earlier code predicted."""
  config = tiny_runs.config(tmp_path)
  x = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
  expected = np.load(RUN / 'probabilities.npz')
  for which in ('best', 'latest'):
    predictor = infer.Predictor(config, RUN / 'workdir', which)
    np.testing.assert_allclose(predictor.probabilities(x), expected[which], rtol=1e-6, atol=1e-7)


def test_a_run_stopped_by_earlier_code_resumes_to_what_the_uninterrupted_run_logged(tmp_path):
  """tests/tiny_runs.py's run, stopped by earlier code at step 12 (train.max_steps). Its
  stored config is in the flat layout of da1b17d (every network's options): read as
  today's, it is the same config, so the run resumes without --resume_with_changes and
  logs what the same run, never stopped, logged then."""
  phantom.generate(tmp_path / 'data', 3, seed=0, size=64)
  workdir = tmp_path / 'run'
  shutil.copytree(RUN / 'workdir', workdir)
  summary = train.train_and_evaluate(tiny_runs.config(tmp_path / 'data'), str(workdir))
  assert summary['step'] == 16
  records = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  expected = json.loads((RUN / 'records_after_step_12.json').read_text())
  assert len(records) == len(expected)
  for record, want in zip(records, expected, strict=True):
    record.pop('time')
    assert record.keys() == want.keys()
    for key, value in want.items():
      if isinstance(value, float):
        np.testing.assert_allclose(record[key], value, rtol=1e-6, err_msg=f'{key} of {record}')
      else:
        assert record[key] == value, (key, record, want)


CONFIGS = json.loads((FIXTURES / 'configs_da1b17d.json').read_text())
# Each stored config's options as today's keys, and a change of one of them.
TODAY = {
  'hrnet': ({'size': 'small_v2', 'base_channels': 16}, ('size', 'full')),
  'segformer': ({'size': 'b0'}, ('size', 'b2')),
  'unetpp': ({'align_corners': False}, ('align_corners', True)),
  'msunet': ({'small_kernel': 5}, ('small_kernel', 3)),
  'unet_coa': ({'attention_impl': 'chunked'}, ('cc_hidden', 2)),
}


@pytest.mark.parametrize('variant', sorted(CONFIGS))
def test_a_stored_config_in_the_earlier_layout_reads_as_todays(variant):
  """Renamed options take their new names and the other networks' options (which this
  network never read) are gone: no change to resume with. A real change is named by its
  new key."""
  same, (key, value) = TODAY[variant]
  config = load_config(ROOT / 'configs/demo.py', f'variant={variant}')
  config.model.update(same)
  config.data.channels = ('CT',)  # as the run resolves it from the data before it resumes
  assert resume.changes(CONFIGS[variant], config) == []
  config.model[key] = value
  assert [k for k, _, _ in resume.changes(CONFIGS[variant], config)] == [f'model.{key}']
