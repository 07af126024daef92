"""The monitor's files, read back independently of the writer: TFRecord frames with both
CRC-32C checks computed here, and `Event` protos decoded by hand from TensorBoard's
event.proto field numbers."""

import json
import struct
import time

import numpy as np

from ecam_jax.monitor import Monitor


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: reflected polynomial 0x82F63B78."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_records(data: bytes) -> list[bytes]:
  """TFRecord frames (length, masked CRC of the length, data, masked CRC of the data)."""
  records, pos = [], 0
  while pos < len(data):
    header = data[pos : pos + 8]
    (length,) = struct.unpack('<Q', header)
    (length_crc,) = struct.unpack('<I', data[pos + 8 : pos + 12])
    assert length_crc == _masked(header)
    payload = data[pos + 12 : pos + 12 + length]
    (data_crc,) = struct.unpack('<I', data[pos + 12 + length : pos + 16 + length])
    assert data_crc == _masked(payload)
    records.append(payload)
    pos += 16 + length
  assert pos == len(data)
  return records


def _decode(message: bytes) -> dict[int, list]:
  """A proto message as {field number: [raw values]} (varint, fixed64, bytes, fixed32)."""

  def varint(pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
      byte = message[pos]
      value |= (byte & 0x7F) << shift
      pos, shift = pos + 1, shift + 7
      if not byte & 0x80:
        return value, pos

  fields, pos = {}, 0
  while pos < len(message):
    key, pos = varint(pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = varint(pos)
    elif wire == 1:
      value, pos = message[pos : pos + 8], pos + 8
    elif wire == 2:
      length, pos = varint(pos)
      value, pos = message[pos : pos + length], pos + length
    else:
      assert wire == 5, f'unexpected wire type {wire}'
      value, pos = message[pos : pos + 4], pos + 4
    fields.setdefault(number, []).append(value)
  return fields


# Event: wall_time=1 (double), step=2 (int64), file_version=3, summary=5, session_log=7.
# Summary: value=1; Summary.Value: tag=1, simple_value=2 (float). SessionLog: status=1.
def _events(logdir) -> list[dict[int, list]]:
  (path,) = logdir.glob('events.out.tfevents.*')
  return [_decode(r) for r in _read_records(path.read_bytes())]


def _scalars(events) -> list[tuple[str, int, float, float]]:
  """(tag, step, value, wall time) of every scalar, in file order."""
  out = []
  for event in events:
    for summary in event.get(5, []):
      for value_proto in _decode(summary)[1]:
        fields = _decode(value_proto)
        (value,) = struct.unpack('<f', fields[2][0])
        (wall_time,) = struct.unpack('<d', event[1][0])
        out.append((fields[1][0].decode(), event[2][0], value, wall_time))
  return out


def test_crc32c_known_vectors():
  assert _crc32c(b'123456789') == 0xE3069283
  # RFC 3720 (iSCSI), appendix B.4.
  assert _crc32c(bytes(32)) == 0x8A9136AA
  assert _crc32c(b'\xff' * 32) == 0x62A8AB43
  assert _crc32c(bytes(range(32))) == 0x46DD794E


def test_write_logs_each_numeric_value_as_a_scalar(tmp_path):
  monitor = Monitor(tmp_path, total_steps=10, start_step=0, enabled=True)
  monitor.write(3, 'train', {'loss': np.float32(0.25), 'lr': 1e-3, 'note': 'x', 'bad': np.nan})
  monitor.write(2**40, 'val', {'dsc': 0.875, 'epoch': 1})
  monitor.close()
  monitor.close()

  events = _events(tmp_path / 'tensorboard')
  assert events[0][3] == [b'brain.Event:2']
  scalars = _scalars(events)
  f32 = lambda x: float(np.float32(x))
  assert [s[:3] for s in scalars] == [
    ('train/loss', 3, 0.25),
    ('train/lr', 3, f32(1e-3)),
    ('val/dsc', 2**40, 0.875),
    ('val/epoch', 2**40, 1.0),
  ]  # the string and the non-finite value are not scalars

  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['step'], r['kind']) for r in lines] == [(3, 'train'), (2**40, 'val')]
  assert lines[0]['bad'] is None and lines[0]['note'] == 'x' and lines[0]['loss'] == 0.25
  # A scalar carries the time of its metrics.jsonl record.
  assert [s[3] for s in scalars] == [lines[0]['time']] * 2 + [lines[1]['time']] * 2


def test_events_reach_disk_without_close(tmp_path):
  monitor = Monitor(tmp_path, total_steps=10, start_step=0, enabled=True)
  try:
    monitor.write(1, 'train', {'loss': 0.5})
    # The writer's thread flushes within FLUSH_SECONDS (1 s); 60 s leaves room for a busy
    # machine, and the loop ends as soon as the record is there.
    deadline = time.monotonic() + 60
    while not [s for s in _scalars(_events(tmp_path / 'tensorboard')) if s[0] == 'train/loss']:
      assert time.monotonic() < deadline, 'the scalar never reached the event file'
      time.sleep(0.1)
  finally:
    monitor.close()


def test_resumed_run_hides_steps_after_its_checkpoint(tmp_path):
  def starts(workdir, start_step: int) -> list[list[int]]:
    """Steps of the SessionLog START events (status 1) the monitor writes."""
    Monitor(workdir, total_steps=10, start_step=start_step, enabled=True).close()
    return [e[2] for e in _events(workdir / 'tensorboard') if 7 in e and _decode(e[7][0])[1] == [1]]

  assert starts(tmp_path / 'fresh', 0) == []
  # TensorBoard drops earlier events with step >= 6 when it meets SessionLog START at 6.
  assert starts(tmp_path / 'resumed', 5) == [[6]]


def test_each_monitor_gets_its_own_event_file_and_other_processes_write_nothing(tmp_path):
  a = Monitor(tmp_path / 'run', total_steps=10, start_step=0, enabled=True)
  b = Monitor(tmp_path / 'run', total_steps=10, start_step=0, enabled=True)
  a.write(1, 'train', {'loss': 1.0})
  b.write(1, 'train', {'loss': 2.0})
  a.close()
  b.close()
  paths = sorted((tmp_path / 'run' / 'tensorboard').iterdir())
  assert len(paths) == 2
  values = sorted(s[2] for p in paths for s in _scalars(_events_of(p)))
  assert values == [1.0, 2.0]

  silent = Monitor(tmp_path / 'other', total_steps=10, start_step=0, enabled=False)
  silent.write(1, 'train', {'loss': 1.0})
  silent.close()
  assert not (tmp_path / 'other').exists()


def _events_of(path) -> list[dict[int, list]]:
  return [_decode(r) for r in _read_records(path.read_bytes())]
