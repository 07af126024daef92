"""Fig. 5: attention maps as Grad-CAM (Selvaraju et al. 2017) at each network's attention
block, on a few test slices, drawn as one PNG grid like the paper's.

The paper does not say how its maps are made. Here, for an activation A [h, w, C] of the
block: w_c = the spatial mean of d(sum over the slice of the foreground logit)/dA_c, the
map = ReLU(sum_c w_c A_c), resized bilinearly to the slice and divided by its maximum
(0 everywhere if the map is 0). A and its gradient come from `flax.linen.intercept_methods`
without touching the model: the interceptor adds a zero tensor to the block's output and
records it; the gradient with respect to that tensor is the gradient with respect to A.
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from ecam_jax import checkpoint, parallel  # noqa: E402
from ecam_jax.atomic import atomic_path  # noqa: E402
from ecam_jax.data import cache as data_cache  # noqa: E402
from ecam_jax.experiments import runner  # noqa: E402
from ecam_jax.experiments.tables import Table  # noqa: E402
from ecam_jax.models.build import abstract_variables, build_model  # noqa: E402

# Variant -> the module (its path in the network) whose output is the attention map's A.
# U-Net + CoA / SE / CBAM: the bottleneck, which is the attention block alone when MuS is
# off; Attention U-Net: the gate of the highest-resolution decoder level (the gated skip);
# DA-Net: the input of the final head, sa + sc, the sum of its two attention branches (its
# dropout, the identity at inference, is the first module to receive it).
TARGETS = {
  'unet_coa': ('bottleneck',),
  'unet_se': ('bottleneck',),
  'unet_cbam': ('bottleneck',),
  'attention_unet': ('decoder4', 'gate'),
  'danet': ('conv8_dropout',),
}
SLICES = 3  # rows of the grid


def gradcam(model: nn.Module, variables: dict, images: jax.Array, target: tuple) -> np.ndarray:
  """[B, H, W] Grad-CAM maps in [0, 1] of `images` [B, H, W, 1] at the output of the
  submodule at path `target` (see the module docstring)."""

  def run(eps):
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and context.module.path == target:
        out = out if eps is None else out + eps.astype(out.dtype)
        captured['a'] = out
      return out

    with nn.intercept_methods(interceptor):
      logits = model.apply(variables, images, train=False)['logits']
    if 'a' not in captured:
      raise ValueError(f'no module at {"/".join(target)} in {type(model).__name__}')
    return logits[..., 0].astype(jnp.float32).sum(), captured['a']

  shape = jax.eval_shape(lambda: run(None)[1])
  grad, activation = jax.grad(run, has_aux=True)(jnp.zeros(shape.shape, jnp.float32))
  weights = grad.mean(axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
  cam = nn.relu((weights * activation.astype(jnp.float32)).sum(-1))  # [B, h, w]
  cam = jax.image.resize(cam, (*images.shape[:3],), 'bilinear')
  peak = cam.max(axis=(1, 2), keepdims=True)
  return np.asarray(jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1), 0))


def _row_config(row_dir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config the row was trained with (its config.json)."""
  return ml_collections.ConfigDict(json.loads((row_dir / 'config.json').read_text()))


def pick_slices(row_dir: pathlib.Path, count: int = SLICES) -> list[tuple[str, int]]:
  """(case, z) of `count` test slices: the slice with the most foreground of each test
  case, then each case's second, and so on (the row's splits.json and cache)."""
  cache = _cache(row_dir)
  ranked = []
  for case in json.loads((row_dir / 'splits.json').read_text())['test']:
    areas = np.asarray(cache.label(case)).sum(axis=(1, 2), dtype=np.int64)
    order = np.argsort(-areas, kind='stable')
    ranked += [(rank, -int(areas[z]), case, int(z)) for rank, z in enumerate(order)]
  return [(case, z) for *_, case, z in sorted(ranked)[:count]]


def _cache(row_dir: pathlib.Path) -> data_cache.SliceCache:
  return data_cache.SliceCache(data_cache.cache_path(_row_config(row_dir).data, row_dir))


def slice_arrays(row_dir: pathlib.Path, slices: list[tuple[str, int]]):
  """(images [S, H, W, C] float32, labels [S, H, W] uint8) of `slices`, preprocessed."""
  cache = _cache(row_dir)
  images = np.stack([np.asarray(cache.image(case)[z]) for case, z in slices])
  return images, np.stack([np.asarray(cache.label(case)[z]) for case, z in slices])


def row_maps(row_dir: pathlib.Path, variant: str, images: np.ndarray) -> np.ndarray:
  """Grad-CAM maps [S, H, W] of a trained row's best checkpoint on `images` [S, H, W, C]."""
  config = _row_config(row_dir)
  model = build_model(config.model)
  mesh = parallel.data_mesh(jax.local_devices()[:1])
  size = config.data.image_size
  target = parallel.abstract(abstract_variables(model, size), parallel.replicated(mesh))
  variables, _ = checkpoint.restore_variables(row_dir, 'best', target)
  return gradcam(model, variables, jnp.asarray(images), TARGETS[variant])


def write_grid(table: Table, workdir: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
  """The Fig. 5 grid: rows = test slices, columns = image, ground truth, then one heat map
  per network over the image (jet); a network without a finished run says why."""
  runs = []
  for row in table.rows:
    row_dir = runner.source_dir(workdir, table, row, row.id)
    state = runner.state_of(row_dir) if runner.available(row) else runner.UNAVAILABLE
    runs.append((row, row_dir, state))
  finished = [r for r in runs if r[2] == runner.FINISHED]
  slices = pick_slices(finished[0][1]) if finished else []
  count = max(len(slices), 1)
  fig, axes = plt.subplots(count, 2 + len(runs), figsize=(2 * (2 + len(runs)), 2 * count))
  axes = np.asarray(axes).reshape(count, 2 + len(runs))
  for ax in axes.ravel():
    ax.set_axis_off()
  if slices:
    images, labels = slice_arrays(finished[0][1], slices)
    for i, (case, z) in enumerate(slices):
      axes[i, 0].imshow(images[i, ..., 0], cmap='gray')
      axes[i, 0].set_title(f'{case} z={z}', fontsize=7)
      axes[i, 1].imshow(labels[i], cmap='gray')
  for column, (row, row_dir, state) in enumerate(runs, start=2):
    axes[0, column].set_title(row.label, fontsize=8)
    if state != runner.FINISHED:
      axes[0, column].text(0.5, 0.5, f'not available\n({state})', ha='center', fontsize=7)
      continue
    maps = row_maps(row_dir, row.variant, images)
    for i in range(len(slices)):
      axes[i, column].imshow(images[i, ..., 0], cmap='gray')
      axes[i, column].imshow(maps[i], cmap='jet', alpha=0.5, vmin=0, vmax=1)
  axes[0, 1].set_title('ground truth', fontsize=8)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format='png', dpi=100, bbox_inches='tight')
  plt.close(fig)
  return path
