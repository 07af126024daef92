"""The GPU report run to its end on this CPU at a tiny size: every field it promises, and
the Markdown the README's GPU section embeds."""

import json
import pathlib

import pytest

from ecam_jax import bench_report
from ecam_jax.configuration import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')  # the headline row
  config.model.base_channels = 4
  config.data.image_size = 32
  config.eval.batch_size = 8
  out = tmp_path_factory.mktemp('report')
  got = bench_report.report(
    config, out, 3600, ['unet'], steps=1, slices=6, batches=(1,), dtypes=('float32',)
  )
  return got, out


def test_every_field_is_there_and_the_files_agree(report):
  got, out = report
  assert json.loads((out / 'report.json').read_text()) == json.loads(json.dumps(got))
  assert set(got) >= {'date', 'jax', 'backend', 'devices', 'peak_flops', 'train', 'volume'}
  assert got['peak_flops']['float32'] > 0 and got['peak_flops']['bfloat16'] > 0
  rows = {(r['variant'], r['dtype']) for r in got['train']}
  assert rows == {('unet', 'float32')}
  for row in got['train']:
    assert row['batch_per_device'] == 1 and set(row['tried']) == {1}
    assert row['images_per_s'] > 0 and row['step_ms'] > 0 and row['compile_s'] > 0
    assert 0 < row['mfu'] < 1 and row['gflop_per_image'] > 0
  volume = got['volume']
  assert volume['shape'] == '32x32x6' and volume['seconds'] > 0
  assert set(volume['stages']) >= {'read', 'preprocess', 'model', 'restore', 'write', 'total'}
  device = volume['device_stages']
  assert list(device) == ['transfer', 'normalize_resize', 'model', 'resize_back_decide']
  assert all(s > 0 for s in device.values())
  assert got['profile']['top_ops'] and all(o['ms'] > 0 for o in got['profile']['top_ops'])
  assert got['loader']['slices_per_s'] > 0 and got['loader']['device_images_per_s'] > 0
  assert got['skipped'] == []


def test_the_markdown_is_the_readmes(report):
  got, out = report
  md = (out / 'report.md').read_text()
  assert md == bench_report.markdown(got)
  assert bench_report.TRAIN_HEADER in md and '| unet | float32 | False | 1 |' in md
  readme = (ROOT / 'README.md').read_text()
  gpu = readme[readme.index('### On a GPU') : readme.index('## Results on the synthetic')]
  assert bench_report.TRAIN_HEADER in gpu  # the table the report writes is the one shown


def test_a_spent_budget_skips_and_says_so(tmp_path):
  config = load_config(ROOT / 'configs/demo.py')
  got = bench_report.report(config, tmp_path, budget_s=0, variants=['unet'])  # ec_cam_unet's
  assert got['train'] == [] and 'volume' not in got
  assert got['skipped'][:2] == ['ec_cam_unet bfloat16 batch 4', 'volume']
  assert 'Not measured within the 0 s budget' in (tmp_path / 'report.md').read_text()
