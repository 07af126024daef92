"""Checks that torch_ecam.py (here) is the JAX model's network (plain asserts; prints OK).

From the repository root (--jax-python: the project's interpreter, default .venv/bin/python):
  .venv-torch/bin/python benchmarks/torch_parity/check_torch_ecam.py [--jax-python PATH]

1. Parameter counts equal the JAX model's (BN running statistics not counted) for every
   variant at base 16 and 64; the JAX counts come from the JAX interpreter when it is
   there, else from the table below (measured with the JAX model). With the JAX
   interpreter, torch_ecam.VARIANTS' switches and VARIANT_LOSS's weights equal each JAX
   variant's config.model and config.loss too (the twin keeps its own copy of them).
2. Folding EC (eval mode, after BN statistics and affine parameters moved) gives the
   unfolded model's outputs.
3. With the JAX interpreter: the JAX model's variables loaded into the torch model give
   the same logits and side logits (eval, folded eval, train mode), the same loss and the
   same gradients, and BN running means move the same way.

Not part of the project's test suite (torch is not a project dependency).
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_ecam  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository root

# From the JAX model (sum of .size over variables['params'] at 128x128, 1 input channel,
# 1 logit); used when the JAX interpreter is not available.
JAX_COUNTS = {
  ('unet', 16): 1942289,
  ('unet', 64): 31036481,
  ('ec_cam_unet', 16): 4831240,
  ('ec_cam_unet', 64): 77176792,
}

# The JAX side of check 1: each variant's parameter count at each base, and (once per
# variant) its switches and loss weights from config.model and config.loss, which
# torch_ecam.VARIANTS and VARIANT_LOSS must equal.
JAX_COUNT_SCRIPT = """
import json, sys
import jax
from ecam_jax.configuration import load_config
from ecam_jax.models.build import abstract_variables, build_model
SWITCHES = ('use_cc', 'use_sc', 'use_mus', 'use_ec', 'use_dws', 'attention', 'fusion')
counts, switches, losses = {}, {}, {}
for item in sys.argv[1:]:
  variant, base = item.split(':')
  config = load_config('configs/default.py', f'variant={variant}')
  switches[variant] = {k: config.model[k] for k in SWITCHES}
  losses[variant] = [config.loss[k] for k in ('w_dice', 'w_bce', 'w_side')]
  config.model.base_channels = int(base)
  variables = abstract_variables(build_model(config.model), 128)
  counts[item] = int(sum(x.size for x in jax.tree.leaves(variables['params'])))
print(json.dumps({'counts': counts, 'switches': switches, 'losses': losses}))
"""

# Writes an .npz: the JAX model's variables (BN parameters and statistics and every
# bias moved off their initial values), an input, labels, and what the model gives.
JAX_DUMP_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from flax import traverse_util
from ecam_jax.configuration import load_config
from ecam_jax.losses import total_loss
from ecam_jax.models.build import build_model, has_ec_blocks, init_variables
from ecam_jax.models.layers import fold_ec
path, variant, base, size, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
config = load_config('configs/default.py', f'variant={variant}')
config.model.base_channels = base
config.model.attention_scale = sys.argv[6] if sys.argv[6] == 'rsqrt' else float(sys.argv[6])
model = build_model(config.model)
rng = np.random.default_rng(0)
variables = init_variables(model, 0, size)
params = traverse_util.flatten_dict(jax.device_get(variables['params']), sep='/')
stats = traverse_util.flatten_dict(jax.device_get(variables['batch_stats']), sep='/')
for k, v in params.items():
  if k.endswith('scale'):
    params[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
  elif k.endswith('bias'):
    params[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
for k, v in stats.items():
  if k.endswith('mean'):
    stats[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
  else:
    stats[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
variables = {'params': traverse_util.unflatten_dict(params, sep='/'),
             'batch_stats': traverse_util.unflatten_dict(stats, sep='/')}
x = rng.standard_normal((batch, size, size, 1)).astype(np.float32)
y = (rng.uniform(size=(batch, size, size, 1)) < 0.3).astype(np.float32)
out = {'x': x, 'y': y}
out.update({'p:' + k: v for k, v in params.items()})
out.update({'s:' + k: v for k, v in stats.items()})

def keep(tag, o):
  out[tag + '_logits'] = np.asarray(o['logits'])
  for i, s in enumerate(o['side_logits']):
    out[f'{tag}_side{i}'] = np.asarray(s)

keep('eval', model.apply(variables, x, train=False))
if has_ec_blocks(config.model):
  folded = build_model(config.model, folded=True)
  keep('folded', folded.apply(fold_ec(variables, config.model.bn_epsilon), x, train=False))
else:  # nothing to fold: the folded model is the model
  keep('folded', model.apply(variables, x, train=False))

def loss_fn(p):
  o, new = model.apply({'params': p, 'batch_stats': variables['batch_stats']}, x, train=True,
                       mutable=['batch_stats'])
  return total_loss(o, y, config.loss)[0], (o, new)

(loss, (o, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
keep('train', o)
out['loss'] = np.asarray(loss)
grads = traverse_util.flatten_dict(jax.device_get(grads), sep='/')
out.update({'g:' + k: np.asarray(v) for k, v in grads.items()})
new = traverse_util.flatten_dict(jax.device_get(new['batch_stats']), sep='/')
out.update({'n:' + k: np.asarray(v) for k, v in new.items()})
np.savez(path, **out)
"""

# torch module path -> JAX module path, applied in order (re.sub on the dotted name).
_RULES = [
  (r'^encoder\.(\d+)\.', lambda m: f'encoder{int(m[1]) + 1}/'),
  (r'^decoder\.(\d+)\.', lambda m: f'decoder{int(m[1]) + 1}/'),
  (r'^bottleneck\.attention\.cc\.', 'bottleneck/coa/ChannelCorrelation_0/'),
  (r'ChannelCorrelation_0/conv1$', 'ChannelCorrelation_0/Conv_0'),
  (r'ChannelCorrelation_0/bn1$', 'ChannelCorrelation_0/BatchNorm_0'),
  (r'ChannelCorrelation_0/conv2$', 'ChannelCorrelation_0/Conv_1'),
  (r'ChannelCorrelation_0/bn2$', 'ChannelCorrelation_0/BatchNorm_1'),
  (r'ChannelCorrelation_0/deconv$', 'ChannelCorrelation_0/ConvTranspose1D_0'),
  (
    r'^bottleneck\.mus\.branches\.(\d+)\.',
    lambda m: f'bottleneck/mus/rate{(6, 12, 18)[int(m[1])]}/',
  ),
  (r'^bottleneck\.mus\.project\.', 'bottleneck/mus/project/'),
  (r'^bottleneck\.fuse\.', 'bottleneck/fuse/'),
  (r'^side$', 'side_bottleneck/Conv_0'),
  (r'(^|[./])conv$', r'\1Conv_0'),
  (r'(^|[./])bn$', r'\1BatchNorm_0'),
  (r'\.', '/'),
]
_LEAVES = {
  'weight': ('p', 'kernel'),
  'bias': ('p', 'bias'),
  'running_mean': ('s', 'mean'),
  'running_var': ('s', 'var'),
}


def jax_key(model: torch.nn.Module, name: str) -> tuple[str, str]:
  """A torch parameter or buffer name -> (collection prefix, JAX path)."""
  module_name, leaf = name.rsplit('.', 1)
  module = model.get_submodule(module_name)
  collection, jax_leaf = _LEAVES[leaf]
  if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and leaf == 'weight':
    jax_leaf = 'scale'
  path = module_name
  for pattern, repl in _RULES:
    path = re.sub(pattern, repl, path)
  return collection, f'{path}/{jax_leaf}'


def to_torch(module: torch.nn.Module, array: np.ndarray) -> torch.Tensor:
  """A JAX kernel -> the torch layout of `module`'s weight (1-D leaves pass through)."""
  if array.ndim == 1:
    return torch.from_numpy(array)
  if isinstance(module, torch.nn.ConvTranspose2d):  # [kh, kw, I, O] -> [I, O, kh, kw]
    return torch.from_numpy(array.transpose(2, 3, 0, 1).copy())
  if isinstance(module, torch.nn.ConvTranspose1d):  # [k, I, O] -> [I, O, k]
    return torch.from_numpy(array.transpose(1, 2, 0).copy())
  if array.ndim == 4:  # conv [kh, kw, I, O] -> [O, I, kh, kw]
    return torch.from_numpy(array.transpose(3, 2, 0, 1).copy())
  return torch.from_numpy(array.transpose(2, 1, 0).copy())  # conv1d [k, I, O] -> [O, I, k]


def close(name: str, got: torch.Tensor, want: np.ndarray, tol: float) -> None:
  got = got.detach().double().numpy()
  want = np.asarray(want, np.float64)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
  assert err < tol, f'{name}: relative error {err:.2e} >= {tol}'


def nchw(a: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(a.transpose(0, 3, 1, 2).copy())


def run_jax(jax_python: str, script: str, *args: str) -> str:
  """Runs `script` with the JAX interpreter in the repository root; its stdout. A failure
  ends the check with the script's own error (its stderr's last lines)."""
  run = subprocess.run(
    [jax_python, '-c', script, *args], cwd=ROOT, capture_output=True, text=True, check=False
  )
  if run.returncode:
    tail = '\n'.join(run.stderr.strip().splitlines()[-20:])
    raise SystemExit(f'the JAX side failed (exit {run.returncode}), args {list(args)}:\n{tail}')
  return run.stdout


def check_counts(jax_python: str | None) -> None:
  items = [(v, b) for v in torch_ecam.VARIANTS for b in (16, 64)]
  if jax_python:
    stdout = run_jax(jax_python, JAX_COUNT_SCRIPT, *(f'{v}:{b}' for v, b in items))
    found = json.loads(stdout.strip().splitlines()[-1])
    assert set(found['switches']) == set(torch_ecam.VARIANTS)
    for variant, switches in found['switches'].items():
      assert torch_ecam.VARIANTS[variant] == switches, (variant, torch_ecam.VARIANTS[variant])
      weights = torch_ecam.VARIANT_LOSS.get(variant, (1.0, 1.0, 1.0))
      assert list(weights) == found['losses'][variant], (variant, weights)
    print(f'variants: the {len(found["switches"])} switch sets and loss weights equal the JAX ones')
    want = {(v, b): found['counts'][f'{v}:{b}'] for v, b in items}
    for key, count in JAX_COUNTS.items():
      assert want[key] == count, (key, want[key], count)
  else:
    want = JAX_COUNTS
  for (variant, base), count in sorted(want.items()):
    got = torch_ecam.count_params(torch_ecam.build(variant, base))
    assert got == count, f'{variant} base {base}: torch {got:,} != JAX {count:,}'
    if (variant, base) in JAX_COUNTS:
      print(f'params {variant:>12} base {base:>2}: torch {got:>11,} == JAX {count:>11,}')
  print(f'parameter counts: {len(want)} (variant, base) pairs equal')


def check_fold() -> None:
  torch.manual_seed(0)
  model = torch_ecam.build('ec_cam_unet', 8)
  with torch.no_grad():  # move BN affine parameters off their initial values
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
  model.train()
  with torch.no_grad():  # move the running statistics (momentum 0.1)
    for _ in range(5):
      model(torch.randn(2, 1, 64, 64) * 2.0 + 0.5)
  ec = [m for m in model.modules() if isinstance(m, torch_ecam.AsymConv)]
  assert len(ec) == 10
  assert all(m.square_bn.running_mean.abs().max() > 1e-3 for m in ec)
  model.eval()
  folded = torch_ecam.fold_ec(model).eval()
  assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.encoder.modules())
  x = torch.randn(3, 1, 64, 64)
  for memory_format in (torch.contiguous_format, torch.channels_last):
    m1 = model.to(memory_format=memory_format)
    m2 = folded.to(memory_format=memory_format)
    xm = x.to(memory_format=memory_format)
    with torch.inference_mode():
      a, b = m1(xm), m2(xm)
    for key in ('logits',):
      close(f'folded {key}', b[key], a[key].numpy(), 1e-4)
    close('folded side', b['side_logits'][0], a['side_logits'][0].numpy(), 1e-4)
  n_unfolded, n_folded = torch_ecam.count_params(model), torch_ecam.count_params(folded)
  print(f'EC fold: folded == unfolded in eval mode ({n_unfolded:,} -> {n_folded:,} params)')


def check_against_jax(jax_python: str, variant: str, scale: str = '1.0') -> None:
  base, size, batch = 8, 64, 2
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'jax.npz'
    run_jax(jax_python, JAX_DUMP_SCRIPT, str(path), variant, *map(str, (base, size, batch)), scale)
    ref = dict(np.load(path))
  model = torch_ecam.build(variant, base, attention_scale=scale if scale == 'rsqrt' else 1.0)
  used = set()
  with torch.no_grad():
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
      if name.endswith('num_batches_tracked'):
        continue
      collection, key = jax_key(model, name)
      array = ref[f'{collection}:{key}']
      used.add(f'{collection}:{key}')
      value = to_torch(model.get_submodule(name.rsplit('.', 1)[0]), array)
      assert value.shape == tensor.shape, (name, key, value.shape, tensor.shape)
      tensor.copy_(value)
  unused = {k for k in ref if k[:2] in ('p:', 's:')} - used
  assert not unused, f'JAX variables not loaded: {sorted(unused)}'
  x, y = nchw(ref['x']), nchw(ref['y'])
  n_sides = sum(k.startswith('eval_side') for k in ref)

  def compare(tag, out, tol):
    close(f'{tag} logits', out['logits'], ref[f'{tag}_logits'].transpose(0, 3, 1, 2), tol)
    assert len(out['side_logits']) == n_sides
    for i, s in enumerate(out['side_logits']):
      close(f'{tag} side {i}', s, ref[f'{tag}_side{i}'].transpose(0, 3, 1, 2), tol)

  model.eval()
  with torch.inference_mode():
    compare('eval', model(x), 1e-3)
    compare('folded', torch_ecam.fold_ec(model).eval()(x), 1e-3)
  model.train()
  out = model(x)
  compare('train', out, 1e-3)
  weights = torch_ecam.VARIANT_LOSS.get(variant, (1.0, 1.0, 1.0))
  loss = torch_ecam.total_loss(out, y, weights)
  close('loss', loss, ref['loss'], 1e-4)
  loss.backward()
  for name, p in model.named_parameters():
    _, key = jax_key(model, name)
    g = to_torch(model.get_submodule(name.rsplit('.', 1)[0]), ref[f'g:{key}']).numpy()
    close(f'grad {name}', p.grad, g, 2e-3)
  for name, buf in model.named_buffers():
    if name.endswith('running_mean'):  # Flax's momentum 0.9 == PyTorch's 0.1
      close(f'new {name}', buf, ref['n:' + jax_key(model, name)[1]], 1e-3)
  print(f'{variant}: torch == JAX (base {base}, {size}x{size}, batch {batch}): logits, side')
  print('  logits in eval, folded eval and train mode; loss; every gradient; BN running means')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--jax-python', default=str(ROOT / '.venv/bin/python'))
  parser.add_argument('--no-jax', action='store_true', help='stored JAX counts, no cross-check')
  args = parser.parse_args()
  torch.set_num_threads(2)
  jax_python = (
    None if args.no_jax or not pathlib.Path(args.jax_python).exists() else args.jax_python
  )
  check_counts(jax_python)
  check_fold()
  if jax_python:
    for variant in ('ec_cam_unet', 'unet'):
      check_against_jax(jax_python, variant)
  else:
    print('(JAX interpreter not used: stored counts, no numerical cross-check)')
  print('OK')


if __name__ == '__main__':
  main()
