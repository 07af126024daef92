"""The grain pipeline: epoch order, per-process shards, exact resume, workers, eval batches."""

import numpy as np
import pytest
from absl import flags

from ecam_jax.data import cache, pipeline
from ecam_jax.errors import ConfigError, DataError

import nifti_fixtures as fx

SEED = 3


@pytest.fixture(scope='module')
def slice_cache(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipeline')
  fx.write_msd(root / 'data', num_cases=5, shape=(24, 20, 6))  # 30 slices: 7 batches of 4
  return cache.prepare_cache(fx.config(root / 'data'), root / 'work', progress=False)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _positions(sc, batch):
  """Which cached slice each row of a batch is (images are distinct per slice)."""
  flat = {
    sc.image(sc.case_ids[c])[z].tobytes(): p
    for p, (c, z) in enumerate(zip(sc.index.case, sc.index.z, strict=True))
  }
  return [flat[row[..., 0].tobytes()] for row in batch['image']]


def _merged(sc, config, processes, start, n, padded=None):
  """n global batches from `start` on, read by `processes` processes and joined in
  process order, as the global array joins them."""
  shards = [
    _take(
      pipeline.train_iterator(
        sc,
        sc.case_ids,
        config,
        seed=SEED,
        process_index=p,
        process_count=processes,
        start_batch=start,
        padded_batch=padded,
      ),
      n,
    )
    for p in range(processes)
  ]
  return [{k: np.concatenate([s[i][k] for s in shards]) for k in shards[0][i]} for i in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_batches_follow_the_epoch_order(slice_cache):
  sc, config = slice_cache, fx.config()
  assert pipeline.steps_per_epoch(sc, sc.case_ids, config) == 7
  batches = _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), 14)
  assert batches[0]['image'].shape == (4, 32, 32, 1) and batches[0]['image'].dtype == np.float32
  assert batches[0]['label'].shape == (4, 32, 32, 1) and batches[0]['label'].dtype == np.uint8
  drawn = [p for b in batches for p in _positions(sc, b)]
  pool = sc.slices_of(sc.case_ids)
  expected = [
    p for e in (0, 1) for p in pipeline.epoch_order(pool, pool[:0], 0.0, SEED, e, 28).tolist()
  ]
  assert drawn == expected
  first, second = drawn[:28], drawn[28:]
  assert len(set(first)) == 28 and len(set(second)) == 28 and first != second
  for b, positions in zip(batches, np.reshape(drawn, (14, 4)), strict=True):
    for row, p in enumerate(positions):
      case_id = sc.case_ids[sc.index.case[p]]
      np.testing.assert_array_equal(b['label'][row, ..., 0], sc.label(case_id)[sc.index.z[p]])


@pytest.mark.parametrize('process_count', [2, 4])
def test_processes_read_their_rows_of_the_same_global_batches(slice_cache, process_count):
  sc, config = slice_cache, fx.config()
  whole = _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), 9)
  parts = [
    _take(
      pipeline.train_iterator(
        sc, sc.case_ids, config, seed=SEED, process_index=p, process_count=process_count
      ),
      9,
    )
    for p in range(process_count)
  ]
  for k in range(9):
    assert parts[0][k]['image'].shape[0] == 4 // process_count
    merged = {key: np.concatenate([part[k][key] for part in parts]) for key in ('image', 'label')}
    _assert_same([merged], [whole[k]])


def test_a_new_iterator_at_a_global_batch_resumes_exactly(slice_cache):
  sc, config = slice_cache, fx.config(prefetch_batches=2)
  straight = _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), 10)
  # Batches 5..9 cross from epoch 0 into epoch 1.
  fresh = pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED, start_batch=5)
  _assert_same(_take(fresh, 5), straight[5:])


@pytest.mark.parametrize('processes', [2, 4])
def test_elastic_resume_sees_the_same_global_batches(slice_cache, processes):
  """A run on 1 process stopped at global batch 3 and resumed on 2 or 4 processes (or the
  other way round) reads the same slices it would have read without stopping."""
  sc, config = slice_cache, fx.config()
  straight = _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), 12)
  merged = _merged(sc, config, processes, start=3, n=9)
  _assert_same(merged, straight[3:])


def test_two_worker_processes_give_the_same_batches_and_resume(slice_cache):
  sc = slice_cache
  plain = _take(pipeline.train_iterator(sc, sc.case_ids, fx.config(), seed=SEED), 10)
  config = fx.config(num_workers=2, prefetch_batches=2)
  if not flags.FLAGS.is_parsed():  # as absl.app.run does; grain's workers read flags
    with pytest.raises(ConfigError, match='config.data.num_workers=2'):
      pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED)
    flags.FLAGS.mark_as_parsed()
  it = pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED)
  try:
    _assert_same(_take(it, 10), plain)
  finally:
    pipeline.close_iterator(it)
  fresh = pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED, start_batch=4)
  try:
    _assert_same(_take(fresh, 6), plain[4:])
  finally:
    pipeline.close_iterator(fresh)


def test_foreground_only_and_oversampling(slice_cache):
  sc = slice_cache
  fg = sc.index.foreground
  assert 0 < fg.sum() < len(fg)
  config = fx.config(foreground_only=True)
  steps = pipeline.steps_per_epoch(sc, sc.case_ids, config)
  assert steps == fg.sum() // 4
  batches = _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), steps)
  assert all(b['label'][i].any() for b in batches for i in range(4))

  def fg_fraction(oversample):
    config = fx.config(foreground_oversample=oversample)
    drawn = [
      p
      for b in _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), 70)
      for p in _positions(sc, b)
    ]
    return fg[drawn].mean()

  assert fg_fraction(0.0) == pytest.approx(fg.mean(), abs=0.05)
  assert fg_fraction(0.5) >= 0.5 + 0.5 * fg.mean() - 0.05  # forced half plus the rest's share


def test_bad_batch_and_split_errors(slice_cache):
  sc = slice_cache
  config = fx.config()
  config.train.batch_size = 3
  with pytest.raises(
    ConfigError, match=r'config.train.batch_size=3 \(global; padded to 3\).*2 processes'
  ):
    pipeline.train_iterator(sc, sc.case_ids, config, seed=0, process_count=2)
  config.train.batch_size = 64
  with pytest.raises(ConfigError, match='larger than the 30 training slices'):
    pipeline.steps_per_epoch(sc, sc.case_ids, config)
  with pytest.raises(DataError, match='training split is empty'):
    pipeline.train_iterator(sc, [], fx.config(), seed=0)
  with pytest.raises(ConfigError, match='foreground_oversample'):
    pipeline.train_iterator(sc, sc.case_ids, fx.config(foreground_oversample=1.0), seed=0)


def test_eval_batches_cover_every_slice_once_in_order(slice_cache):
  sc = slice_cache
  cases = ['case_003', 'case_001']
  batches = list(pipeline.eval_batches(sc, cases, 5))
  assert len(batches) == 3  # 12 slices: 5 + 5 + 2 and 3 padding rows
  valid = np.concatenate([b['valid'] for b in batches])
  np.testing.assert_array_equal(valid, [True] * 12 + [False] * 3)
  case = np.concatenate([b['case'] for b in batches])[valid]
  z = np.concatenate([b['z'] for b in batches])[valid]
  np.testing.assert_array_equal(case, [0] * 6 + [1] * 6)
  np.testing.assert_array_equal(z, list(range(6)) * 2)
  images = np.concatenate([b['image'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  for i in range(12):
    np.testing.assert_array_equal(images[i], sc.image(cases[case[i]])[z[i]])
    np.testing.assert_array_equal(labels[i, ..., 0], sc.label(cases[case[i]])[z[i]])
  assert not images[12:].any() and not labels[12:].any()
  halves = [
    list(pipeline.eval_batches(sc, cases, 6, process_index=p, process_count=2)) for p in (0, 1)
  ]
  whole = list(pipeline.eval_batches(sc, cases, 6))
  for k, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
        np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key]
      )
  with pytest.raises(ConfigError, match='batch_size=5'):
    next(pipeline.eval_batches(sc, cases, 5, process_count=2))


def test_measure_slices_per_second(slice_cache):
  sc = slice_cache
  rate = pipeline.measure_slices_per_second(
    pipeline.train_iterator(sc, sc.case_ids, fx.config(), seed=0), 3
  )
  assert rate > 0


@pytest.mark.parametrize('processes, padded', [(1, 6), (2, 6), (3, 6), (2, 8)])
def test_padded_global_batches_hold_the_same_real_rows(slice_cache, processes, padded):
  """A global batch of 4 padded to 6 or 8 rows (for 3, 6 or 8 devices), read by 1-3
  processes: the rows marked valid are the unpadded batch's, in order; the rest are zeros."""
  sc, config = slice_cache, fx.config()
  plain = _take(pipeline.train_iterator(sc, sc.case_ids, config, seed=SEED), 9)
  for i, merged in enumerate(_merged(sc, config, processes, start=2, n=7, padded=padded)):
    np.testing.assert_array_equal(merged['valid'], np.arange(padded) < 4)
    _assert_same([{k: merged[k][:4] for k in ('image', 'label')}], [plain[i + 2]])
    assert not merged['image'][4:].any() and not merged['label'][4:].any()
