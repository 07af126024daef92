"""Times the PyTorch EC-CaM-UNet (torch_ecam.py) on the CPU; prints one JSON object.

  .venv-torch/bin/python benchmarks/torch_parity/torch_bench.py --variant ec_cam_unet --base 16 \
      --size 128 --batch 4 [--steps 20 --warmup 5] [--memory-format channels_last] \
      [--threads 2]

train_step_ms: median wall time of one training step after `warmup` steps: forward in
train mode, loss = soft Dice over the batch + BCE from logits + BCE on each side output
(the JAX configs' weights), backward, Adam (weight decay 1e-4 added to the gradient,
PyTorch's Adam), zero_grad. infer_ms_per_slice: median wall time of an eval-mode forward
under torch.inference_mode on `infer_batch` slices with EC folded, divided by the batch;
infer_ms_per_slice_unfolded: the same without folding. peak_flops: a float32
2048x2048 @ 2048x2048 matmul's median rate in GFLOP/s, the machine's yardstick.
Inputs are synthetic (standard normal images, random labels with 30% foreground).

--augment puts the JAX train step's on-device augmentation into the timed step too
(ecam_jax/data/augment.py: per example a horizontal flip with p 0.5, a rotation by
U(-10, 10) degrees, bilinear with the edge replicated for the image and nearest with 0
outside for the label, a Gaussian blur of the image with p 0.5 and sigma U(0.1, 2)):
`python -m ecam_jax.bench` times its real train step, which augments.
"""

import argparse
import json
import math
import pathlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_ecam  # noqa: E402

MEMORY_FORMATS = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}


def timed(fn, steps: int, warmup: int) -> list[float]:
  """Milliseconds of each of `steps` calls of fn() after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return times


def summary(times: list[float]) -> dict:
  return {
    'median': statistics.median(times),
    'min': min(times),
    'max': max(times),
    'n': len(times),
  }


def peak_gflops(n: int = 2048, steps: int = 10, warmup: int = 2) -> float:
  """Median float32 matmul rate (GFLOP/s) of an n x n @ n x n product."""
  gen = torch.Generator().manual_seed(1)
  a = torch.randn(n, n, generator=gen)
  b = torch.randn(n, n, generator=gen)
  out = torch.empty(n, n)
  ms = statistics.median(timed(lambda: torch.matmul(a, b, out=out), steps, warmup))
  return 2.0 * n**3 / (ms * 1e-3) / 1e9


@torch.no_grad()
def augment(
  x: torch.Tensor,
  y: torch.Tensor,
  gen: torch.Generator,
  flip_prob: float = 0.5,
  degrees: float = 10.0,
  blur_prob: float = 0.5,
  sigma: tuple[float, float] = (0.1, 2.0),
) -> tuple[torch.Tensor, torch.Tensor]:
  """The JAX train step's augmentation with its default probabilities and ranges, on
  x, y [B, 1, H, W] float32 (H == W)."""
  b = x.shape[0]
  flip = torch.rand(b, generator=gen) < flip_prob
  angle = (2.0 * torch.rand(b, generator=gen) - 1.0) * degrees
  blur = torch.rand(b, generator=gen) < blur_prob
  s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(b, generator=gen)
  radius = max(1, int(4.0 * sigma[1] + 0.5))  # 4 sigma, as scipy's gaussian_filter
  return apply_augment(x, y, flip, angle, blur, s, radius)


def apply_augment(x, y, flip, angle, blur, sigma, radius: int):
  """Flip, rotate (degrees, counter-clockwise as displayed, about the centre), blur.

  As in ecam_jax/data/augment.py, every part is computed for every example and selected
  per example (flip, blur), so the work does not depend on the draws.
  """
  b, _, h, w = x.shape
  flip, blur = flip.view(b, 1, 1, 1), blur.view(b, 1, 1, 1)
  x, y = torch.where(flip, x.flip(-1), x), torch.where(flip, y.flip(-1), y)
  theta = torch.deg2rad(angle)
  cos, sin, zero = theta.cos(), theta.sin(), torch.zeros(b)
  # Output (x, y) in [-1, 1] (pixel centres, align_corners=True) samples the input at the
  # point rotated about the centre: x_in = cos x - sin y, y_in = sin x + cos y.
  affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
  grid = F.affine_grid(affine, [b, 1, h, w], align_corners=True)
  x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=True)
  y = F.grid_sample(y, grid, mode='nearest', padding_mode='zeros', align_corners=True)
  taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
  kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
  kernel = kernel / kernel.sum(1, keepdim=True)  # [B, 2r + 1]
  padded = F.pad(x, (radius,) * 4, mode='replicate').view(1, b, h + 2 * radius, w + 2 * radius)
  rows = F.conv2d(padded, kernel.view(b, 1, -1, 1), groups=b)
  blurred = F.conv2d(rows, kernel.view(b, 1, 1, -1), groups=b).view(b, 1, h, w)
  return torch.where(blur, blurred, x), y


def make_optimizer(params, lr: float, weight_decay: float, impl: str) -> torch.optim.Adam:
  kwargs = {'default': {}, 'foreach': {'foreach': True}, 'fused': {'fused': True}}[impl]
  return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kwargs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='ec_cam_unet', choices=sorted(torch_ecam.VARIANTS))
  parser.add_argument('--base', type=int, default=16, help='base_channels')
  parser.add_argument('--size', type=int, default=128, help='image size (square)')
  parser.add_argument('--batch', type=int, default=4, help='train batch')
  parser.add_argument('--steps', type=int, default=20, help='timed train steps')
  parser.add_argument('--warmup', type=int, default=5, help='untimed train steps first')
  parser.add_argument('--infer-batch', type=int, default=16, help='slices per inference call')
  parser.add_argument('--infer-steps', type=int, default=10, help='timed inference calls')
  parser.add_argument('--infer-warmup', type=int, default=3)
  parser.add_argument('--memory-format', default='channels_last', choices=sorted(MEMORY_FORMATS))
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--lr', type=float, default=1e-5)
  parser.add_argument('--weight-decay', type=float, default=1e-4)
  parser.add_argument(
    '--adam', default='default', choices=['default', 'foreach', 'fused'], help='Adam kernel'
  )
  parser.add_argument(
    '--augment', action='store_true', help="the JAX step's augmentation in the timed step"
  )
  parser.add_argument('--no-peak', action='store_true', help='skip the matmul peak')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  fmt = MEMORY_FORMATS[args.memory_format]
  gen = torch.Generator().manual_seed(args.seed)

  def data(batch):
    x = torch.randn(batch, 1, args.size, args.size, generator=gen)
    y = (torch.rand(batch, 1, args.size, args.size, generator=gen) < 0.3).float()
    return x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)

  model = torch_ecam.build(args.variant, args.base).to(memory_format=fmt)
  weights = torch_ecam.VARIANT_LOSS.get(args.variant, (1.0, 1.0, 1.0))
  optimizer = make_optimizer(model.parameters(), args.lr, args.weight_decay, args.adam)
  x, y = data(args.batch)
  losses = []

  def train_step():
    if args.augment:
      images, labels = augment(x, y, gen)
      images = images.contiguous(memory_format=fmt)
      labels = labels.contiguous(memory_format=fmt)
    else:
      images, labels = x, y
    out = model(images)
    loss = torch_ecam.total_loss(out, labels, weights)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(loss.item())

  model.train()
  train = summary(timed(train_step, args.steps, args.warmup))
  if not all(map(math.isfinite, losses)):
    raise FloatingPointError(f'non-finite loss in training: {losses}')

  # Inference after training, so the BN statistics the fold uses have moved.
  model.eval()
  folded = torch_ecam.fold_ec(model).eval().to(memory_format=fmt)
  xs, _ = data(args.infer_batch)

  def infer(net):
    def call():
      with torch.inference_mode():  # foreground probabilities, as ecam_jax's predict step
        torch.sigmoid(net(xs)['logits'][:, 0]).sum().item()

    per_call = summary(timed(call, args.infer_steps, args.infer_warmup))
    return {k: v / args.infer_batch if k != 'n' else v for k, v in per_call.items()}

  infer_folded = infer(folded)
  infer_unfolded = infer(model)
  peak = None if args.no_peak else peak_gflops()

  result = {
    'framework': 'pytorch',
    'train_step_ms': train['median'],
    'infer_ms_per_slice': infer_folded['median'],
    'infer_ms_per_slice_unfolded': infer_unfolded['median'],
    'peak_flops': peak,
    'peak_flops_unit': 'GFLOP/s (float32 2048^3 matmul, median)',
    'train_step_ms_stats': train,
    'infer_ms_per_slice_stats': infer_folded,
    'infer_ms_per_slice_unfolded_stats': infer_unfolded,
    'torch_version': torch.__version__,
    'threads': torch.get_num_threads(),
    'interop_threads': torch.get_num_interop_threads(),
    'memory_format': args.memory_format,
    'cpu_capability': torch.backends.cpu.get_cpu_capability(),
    'mkldnn': torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
    'python': platform.python_version(),
    'params': torch_ecam.count_params(model),
    'params_folded': torch_ecam.count_params(folded),
    'final_loss': losses[-1],
    'config': {
      'variant': args.variant,
      'base_channels': args.base,
      'image_size': args.size,
      'batch_size': args.batch,
      'steps': args.steps,
      'warmup': args.warmup,
      'infer_batch': args.infer_batch,
      'infer_steps': args.infer_steps,
      'infer_warmup': args.infer_warmup,
      'lr': args.lr,
      'weight_decay': args.weight_decay,
      'adam': args.adam,
      'augment': args.augment,
      'loss_weights': dict(zip(('dice', 'bce', 'side'), weights, strict=True)),
      'seed': args.seed,
    },
  }
  print(json.dumps(result))


if __name__ == '__main__':
  main()
