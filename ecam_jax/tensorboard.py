"""TensorBoard scalar logging without TensorFlow: `Event` protos encoded by hand, framed as
TFRecords (length, masked CRC32C of the length, data, masked CRC32C of the data), in a file
TensorBoard finds by its name, `events.out.tfevents.<time>.<host>`."""

import os
import pathlib
import socket
import struct
import time
from types import TracebackType


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC (rotated and offset, so that CRCs of CRCs stay informative)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # a negative int64 is sent as its 64-bit two's complement
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(data)) + data


def _event(
  wall_time: float, step: int, file_version: str | None = None, summary: bytes = b''
) -> bytes:
  """An `Event` proto: wall_time=1 (double), step=2 (int64), file_version=3 (string),
  summary=5 (Summary)."""
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if summary:
    out += _bytes_field(5, summary)
  return out


def _scalar_summary(tag: str, value: float) -> bytes:
  """A `Summary` with one `Value{tag=1 (string), simple_value=2 (float)}`."""
  value_proto = _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack('<f', value)
  return _bytes_field(1, value_proto)


def _record(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  crcs = [struct.pack('<I', masked_crc32c(part)) for part in (length, data)]
  return length + crcs[0] + data + crcs[1]


class SummaryWriter:
  """Appends scalar events to a new event file in `logdir` (created if missing).

  Records are buffered by the file object; `flush` makes them visible to TensorBoard.
  Use from one process (the one that logs, usually process 0)."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = pathlib.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = f'events.out.tfevents.{int(now):010d}.{socket.gethostname()}'
    self.path = self.logdir / name
    suffix = 0
    while True:  # two writers started in the same second get two files
      try:
        self._file = open(self.path, 'xb')  # noqa: SIM115 (closed in close())
        break
      except FileExistsError:
        suffix += 1
        self.path = self.logdir / f'{name}.{suffix}'
    self._file.write(_record(_event(now, 0, file_version='brain.Event:2')))
    self._file.flush()

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Logs `value` (anything `float()` accepts) under `tag` at `step`."""
    if self._file.closed:
      raise ValueError(f'{self.path}: the writer is closed')
    summary = _scalar_summary(tag, float(value))
    self._file.write(_record(_event(time.time(), int(step), summary=summary)))

  def flush(self) -> None:
    """Hands buffered records to the operating system, where TensorBoard can read them."""
    if not self._file.closed:
      self._file.flush()

  def close(self) -> None:
    """Flushes and closes the file; closing twice is harmless."""
    self._file.close()

  def __enter__(self) -> 'SummaryWriter':
    return self

  def __exit__(
    self,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: TracebackType | None,
  ) -> None:
    self.close()
