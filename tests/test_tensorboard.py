"""The event writer, checked by reading its file back with an independent small reader."""

import struct
import time

import pytest

from ecam_jax import tensorboard


def _mask(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_records(data: bytes) -> list[bytes]:
  """TFRecord frames, with both CRCs checked."""
  records, pos = [], 0
  while pos < len(data):
    header = data[pos : pos + 8]
    (length,) = struct.unpack('<Q', header)
    (length_crc,) = struct.unpack('<I', data[pos + 8 : pos + 12])
    assert length_crc == _mask(tensorboard.crc32c(header))
    payload = data[pos + 12 : pos + 12 + length]
    (data_crc,) = struct.unpack('<I', data[pos + 12 + length : pos + 16 + length])
    assert data_crc == _mask(tensorboard.crc32c(payload))
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


def test_crc32c_known_vectors():
  assert tensorboard.crc32c(b'123456789') == 0xE3069283
  # RFC 3720 (iSCSI), appendix B.4.
  assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA
  assert tensorboard.crc32c(b'\xff' * 32) == 0x62A8AB43
  assert tensorboard.crc32c(bytes(range(32))) == 0x46DD794E
  assert tensorboard.masked_crc32c(b'123456789') == _mask(0xE3069283)


def test_scalars_round_trip(tmp_path):
  before = time.time()
  with tensorboard.SummaryWriter(tmp_path / 'logs') as writer:
    writer.scalar('train/loss', 0.25, step=1)
    writer.scalar('val/dsc', 0.875, step=2**40)
    writer.scalar('neg', -3, step=-1)
  (path,) = (tmp_path / 'logs').iterdir()
  assert path == writer.path
  assert path.name.startswith('events.out.tfevents.')
  int(path.name.split('.')[3])  # the start time, in seconds

  events = [_decode(r) for r in _read_records(path.read_bytes())]
  assert len(events) == 4
  first = events[0]
  assert first[3] == [b'brain.Event:2']
  (wall_time,) = struct.unpack('<d', first[1][0])
  assert before - 1 <= wall_time <= time.time() + 1

  steps = [1, 2**40, 2**64 - 1]  # step -1 is sent as its 64-bit two's complement
  expected = [('train/loss', 0.25), ('val/dsc', 0.875), ('neg', -3.0)]
  for event, step, (tag, value) in zip(events[1:], steps, expected, strict=True):
    assert event[2] == [step]
    (summary,) = event[5]
    (value_proto,) = _decode(summary)[1]
    fields = _decode(value_proto)
    assert fields[1] == [tag.encode()]
    assert struct.unpack('<f', fields[2][0]) == (value,)


def test_flush_makes_records_readable_and_close_is_final(tmp_path):
  writer = tensorboard.SummaryWriter(tmp_path)
  writer.scalar('a', 1.5, step=3)
  writer.flush()
  assert len(_read_records(writer.path.read_bytes())) == 2
  writer.close()
  writer.close()
  with pytest.raises(ValueError, match='closed'):
    writer.scalar('a', 1.0, step=4)


def test_two_writers_in_one_second_get_two_files(tmp_path):
  with tensorboard.SummaryWriter(tmp_path) as a, tensorboard.SummaryWriter(tmp_path) as b:
    assert a.path != b.path
