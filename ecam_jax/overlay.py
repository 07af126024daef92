"""Overlay pictures of a slice with its label and prediction contours, written as PNG with
nothing but zlib (no imaging library), for eyeballing segmentations during evaluation."""

import os
import struct
import zlib

import numpy as np
from scipy import ndimage

from ecam_jax.atomic import write_bytes_atomic

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
GREEN = (0, 255, 0)  # label contour
RED = (255, 0, 0)  # prediction contour
YELLOW = (255, 255, 0)  # where both contours fall on the same pixel
# 4-neighbour structure: a contour pixel touches the outside through an edge, not a corner.
_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def _chunk(kind: bytes, data: bytes) -> bytes:
  crc = zlib.crc32(kind + data) & 0xFFFFFFFF
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
  """Writes an 8-bit RGB image (uint8 [H, W, 3]) as a PNG file (every row with filter 0),
  through a temporary file so that a reader never sees half a picture."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
    raise ValueError(f'{path}: expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}')
  height, width, _ = rgb.shape
  rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], 1)
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)  # depth 8, RGB, no interlace
  png = PNG_SIGNATURE + _chunk(b'IHDR', header)
  png += _chunk(b'IDAT', zlib.compress(rows.tobytes(), 6)) + _chunk(b'IEND', b'')
  write_bytes_atomic(path, png)


def contour(mask: np.ndarray) -> np.ndarray:
  """The mask's pixels with a 4-neighbour outside it (mask minus its 4-neighbour erosion);
  pixels on the image border count as contour."""
  mask = np.asarray(mask, bool)
  return mask & ~ndimage.binary_erosion(mask, structure=_FOUR_NEIGHBOURS, border_value=0)


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray:
  """An RGB picture (uint8 [H, W, 3]) of a slice: `image` (float [H, W]) windowed to its
  own min..max as gray (a constant image is black), the label's contour in green, the
  prediction's in red, and pixels on both contours in yellow."""
  image = np.asarray(image, np.float64)
  if image.ndim != 2:
    raise ValueError(f'expected an [H, W] image, got shape {image.shape}')
  masks = [label] if pred is None else [label, pred]
  for mask in masks:
    if np.shape(mask) != image.shape:
      raise ValueError(f'mask shape {np.shape(mask)} != image shape {image.shape}')
  low, high = image.min(), image.max()
  gray = (image - low) / (high - low) if high > low else np.zeros_like(image)
  rgb = np.repeat(np.round(gray * 255).astype(np.uint8)[..., None], 3, axis=-1)
  on_label = contour(label)
  on_pred = contour(pred) if pred is not None else np.zeros_like(on_label)
  rgb[on_label & ~on_pred] = GREEN
  rgb[on_pred & ~on_label] = RED
  rgb[on_label & on_pred] = YELLOW
  return rgb


def tile(images: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
  """A grid of RGB pictures, row by row, `columns` per row (fewer if there are fewer
  pictures), `gap` black pixels between cells; each cell is as large as the largest
  picture and holds its picture in the top-left corner."""
  if not images or columns < 1:
    raise ValueError(f'need at least one image and one column, got {len(images)}, {columns}')
  columns = min(columns, len(images))
  rows = -(-len(images) // columns)
  cell_h = max(im.shape[0] for im in images)
  cell_w = max(im.shape[1] for im in images)
  grid = np.zeros(
    (rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, 3), np.uint8
  )
  for i, im in enumerate(images):
    top, left = (i // columns) * (cell_h + gap), (i % columns) * (cell_w + gap)
    grid[top : top + im.shape[0], left : left + im.shape[1]] = im
  return grid
