"""PNG encoding (decoded back with zlib), contour colours and tiling."""

import struct
import zlib

import numpy as np
import pytest

from ecam_jax import overlay


def _read_png(data: bytes) -> np.ndarray:
  """Decodes an 8-bit RGB, non-interlaced PNG whose rows all use filter 0."""
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  pos, chunks = 8, []
  while pos < len(data):
    (length,) = struct.unpack('>I', data[pos : pos + 4])
    kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
    (crc,) = struct.unpack('>I', data[pos + 8 + length : pos + 12 + length])
    assert crc == zlib.crc32(kind + body)
    chunks.append((kind, body))
    pos += 12 + length
  assert [kind for kind, _ in chunks] == [b'IHDR', b'IDAT', b'IEND']
  width, height, depth, colour, compression, filtering, interlace = struct.unpack(
    '>IIBBBBB', chunks[0][1]
  )
  assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
  rows = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(height, 1 + width * 3)
  assert not rows[:, 0].any()  # filter type 0 on every row
  return rows[:, 1:].reshape(height, width, 3)


def test_write_png_round_trip(tmp_path):
  rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
  path = tmp_path / 'a.png'
  overlay.write_png(path, rgb)
  np.testing.assert_array_equal(_read_png(path.read_bytes()), rgb)
  assert [p.name for p in tmp_path.iterdir()] == ['a.png']  # no temporary file left


def test_write_png_rejects_a_non_rgb_array(tmp_path):
  with pytest.raises(ValueError, match=r'b\.png: expected a uint8 \[H, W, 3\]'):
    overlay.write_png(tmp_path / 'b.png', np.zeros((4, 4), np.uint8))
  with pytest.raises(ValueError, match='uint8'):
    overlay.write_png(tmp_path / 'b.png', np.zeros((4, 4, 3), np.float32))
  assert not list(tmp_path.iterdir())


def test_overlay_gray_and_contour_colours():
  image = np.linspace(-100.0, 300.0, 64).reshape(8, 8)  # min -> 0, max -> 255
  label = np.zeros((8, 8), bool)
  label[1:5, 1:5] = True  # contour: the square's rim; (2:4, 2:4) is inside
  pred = np.zeros((8, 8), bool)
  pred[1:5, 3:7] = True  # shares the label's top and bottom rows at columns 3, 4
  rgb = overlay.overlay(image, label, pred)
  assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
  assert tuple(rgb[7, 7]) == (255, 255, 255)  # the maximum, off every contour
  assert tuple(rgb[0, 0]) == (0, 0, 0)  # the minimum
  assert tuple(rgb[6, 0]) == (round((48 / 63) * 255),) * 3
  assert tuple(rgb[2, 1]) == overlay.GREEN  # label rim, not on the prediction
  assert tuple(rgb[2, 6]) == overlay.RED  # prediction rim only
  assert tuple(rgb[1, 3]) == overlay.YELLOW  # top row of both squares
  assert tuple(rgb[4, 4]) == overlay.YELLOW  # bottom row of both squares
  assert tuple(rgb[2, 4]) == overlay.GREEN  # label's right rim, inside the prediction
  assert tuple(rgb[2, 3]) == overlay.RED  # prediction's left rim, inside the label
  assert tuple(rgb[3, 2]) == (round((26 / 63) * 255),) * 3  # inside the label: gray


def test_overlay_without_prediction_and_on_a_constant_image():
  label = np.zeros((5, 5), bool)
  label[1:4, 1:4] = True
  rgb = overlay.overlay(np.full((5, 5), 7.0), label)
  expected = np.zeros((5, 5, 3), np.uint8)
  expected[label] = overlay.GREEN
  expected[2, 2] = 0  # the one pixel whose 4 neighbours are all in the label
  np.testing.assert_array_equal(rgb, expected)


def test_contour_counts_the_image_border():
  np.testing.assert_array_equal(
    overlay.contour(np.ones((3, 4), bool)), np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
  )


def test_tile_places_cells_row_by_row_with_a_gap():
  images = [np.full((2, 2, 3), v, np.uint8) for v in (10, 20, 30)]
  images[2] = images[2][:1]  # smaller: top-left of its cell
  grid = overlay.tile(images, columns=2, gap=1)
  assert grid.shape == (5, 5, 3)
  np.testing.assert_array_equal(
    grid[..., 0],
    [
      [10, 10, 0, 20, 20],
      [10, 10, 0, 20, 20],
      [0, 0, 0, 0, 0],
      [30, 30, 0, 0, 0],
      [0, 0, 0, 0, 0],
    ],
  )
  assert overlay.tile(images[:1], columns=4).shape == (2, 2, 3)
  with pytest.raises(ValueError, match='at least one image'):
    overlay.tile([], columns=2)
