"""Independent NumPy (float64) computations of the model's equations, for the tests.

Written from docs/model.md and the paper, not from the Flax code: loops over kernel taps,
explicit softmax, PyTorch's definition of the transposed convolution.
"""

import jax
import numpy as np

EPS = 1e-5


def randomize(variables, seed: int = 0, scale: float = 0.5):
  """Every parameter drawn at random (default inits hide bugs: BN scale 1, bias 0)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: (rng.standard_normal(x.shape) * scale).astype(np.float32), variables
  )


def conv2d(x, w, dilation=1, bias=None):
  """'same' conv, x [B, H, W, I], w [kh, kw, I, O] (cross-correlation, as Flax/PyTorch)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw = w.shape[:2]
  ph, pw = dilation * (kh - 1) // 2, dilation * (kw - 1) // 2
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  b, h, wd, _ = x.shape
  out = np.zeros((b, h, wd, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i * dilation : i * dilation + h, j * dilation : j * dilation + wd]
      out += patch @ w[i, j]
  return out if bias is None else out + bias


def conv1d(x, w, stride=1, padding=0):
  """x [B, L, I], w [k, I, O]; PyTorch's Conv1d."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  k = w.shape[0]
  xp = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
  n = (xp.shape[1] - k) // stride + 1
  return np.stack(
    [np.einsum('bki,kio->bo', xp[:, i * stride : i * stride + k], w) for i in range(n)], 1
  )


def conv_transpose1d(x, w, bias, stride, padding, output_padding):
  """PyTorch's ConvTranspose1d: y[i*stride + k - padding] += x[i] w[k]."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  b, length, _ = x.shape
  k = w.shape[0]
  full = (length - 1) * stride + k + output_padding
  y = np.zeros((b, full, w.shape[2]))
  for i in range(length):
    for t in range(k):
      y[:, i * stride + t] += x[:, i] @ w[t]
  return y[:, padding : full - padding] + bias if padding else y + bias


def batchnorm_train(x, scale, bias, axes=None):
  """Training-mode BatchNorm: statistics of this batch over every axis but the last."""
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1)) if axes is None else axes
  mean, var = x.mean(axes), x.var(axes)
  return (x - mean) / np.sqrt(var + EPS) * scale + bias


def batchnorm_eval(x, scale, bias, mean, var):
  return (np.asarray(x, np.float64) - mean) / np.sqrt(var + EPS) * scale + bias


def relu(x):
  return np.maximum(x, 0.0)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def conv_unit(x, p, dilation=1):
  """p: {'Conv_0': {'kernel'}, 'BatchNorm_0': {'scale', 'bias'}} (train mode)."""
  y = conv2d(x, p['Conv_0']['kernel'], dilation)
  return relu(batchnorm_train(y, p['BatchNorm_0']['scale'], p['BatchNorm_0']['bias']))


def ec_block(x, p):
  """EC: sum of BN(conv3x3), BN(conv1x3), BN(conv3x1), then ReLU (train mode)."""
  total = 0.0
  for name in ('square', 'hor', 'ver'):
    y = conv2d(x, p[name]['kernel'])
    total = total + batchnorm_train(y, p[f'{name}_bn']['scale'], p[f'{name}_bn']['bias'])
  return relu(total)


def ec_branches_eval(x, p, stats):
  """EC before its ReLU in eval mode: sum of BN(conv3x3), BN(conv1x3), BN(conv3x1), each
  BN with its running statistics `stats` ({'square_bn': {'mean', 'var'}, ...})."""
  total = 0.0
  for name in ('square', 'hor', 'ver'):
    bn, st = p[f'{name}_bn'], stats[f'{name}_bn']
    y = conv2d(x, p[name]['kernel'])
    total = total + batchnorm_eval(y, bn['scale'], bn['bias'], st['mean'], st['var'])
  return total


def channel_correlation(f, p):
  """CC, eq. 5-7 (train-mode BN over batch and channel positions)."""
  f = np.asarray(f, np.float64)
  theta = f.mean(axis=(1, 2))[..., None]  # eq. 5: [B, C, 1]
  t = conv1d(theta, p['Conv_0']['kernel'], 1, 1)
  t = relu(batchnorm_train(t, p['BatchNorm_0']['scale'], p['BatchNorm_0']['bias']))
  t = conv1d(t, p['Conv_1']['kernel'], 2, 3)
  t = relu(batchnorm_train(t, p['BatchNorm_1']['scale'], p['BatchNorm_1']['bias']))
  c = f.shape[-1]
  tp = p['ConvTranspose1D_0']
  t = conv_transpose1d(t, tp['kernel'], tp['bias'], 2, 3, c - ((t.shape[1] - 1) * 2 - 6 + 7))
  weights = sigmoid(t[..., 0])  # eq. 6
  return f * weights[:, None, None, :]  # eq. 7


def spatial_correlation(f, value, scale=1.0):
  """SC, eq. 8-9: S = softmax over the last axis of E E^T; out = S value."""
  b, h, w, c = f.shape
  e = np.asarray(f, np.float64).reshape(b, h * w, c)
  v = np.asarray(value, np.float64).reshape(b, h * w, -1)
  s = softmax(np.einsum('bic,bjc->bij', e, e) * scale, axis=-1)
  return np.einsum('bij,bjc->bic', s, v).reshape(b, h, w, -1)


def collaborative_attention(f, p, scale=1.0):
  """CoA, eq. 4: F_A = SC(F, value=CC(F)) + F."""
  return spatial_correlation(f, channel_correlation(f, p['ChannelCorrelation_0']), scale) + f


def multiscale(f, p, rates=(6, 12, 18)):
  """MuS: atrous conv units, concat, 1x1 conv unit."""
  branches = [conv_unit(f, p[f'rate{r}'], r) for r in rates]
  return conv_unit(np.concatenate(branches, -1), p['project'])


def squeeze_excitation(f, p):
  z = np.asarray(f, np.float64).mean(axis=(1, 2))
  z = sigmoid(relu(z @ p['Dense_0']['kernel']) @ p['Dense_1']['kernel'])
  return f * z[:, None, None, :]


def cbam(f, p):
  f = np.asarray(f, np.float64)

  def mlp(z):
    return relu(z @ p['Dense_0']['kernel']) @ p['Dense_1']['kernel']

  f = f * sigmoid(mlp(f.mean(axis=(1, 2))) + mlp(f.max(axis=(1, 2))))[:, None, None, :]
  pooled = np.concatenate([f.mean(-1, keepdims=True), f.max(-1, keepdims=True)], -1)
  s = conv2d(pooled, p['Conv_0']['kernel'])
  s = sigmoid(batchnorm_train(s, p['BatchNorm_0']['scale'], p['BatchNorm_0']['bias']))
  return f * s


def up_conv_2x2(x, kernel, bias):
  """PyTorch ConvTranspose2d(k=2, s=2): y[2i+p, 2j+q] = sum_c x[i, j, c] K[p, q, c]."""
  x = np.asarray(x, np.float64)
  b, h, w, _ = x.shape
  y = np.zeros((b, 2 * h, 2 * w, kernel.shape[-1]))
  for p in range(2):
    for q in range(2):
      y[:, p::2, q::2] = x @ kernel[p, q]
  return y + bias


def resize_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bilinear interpolation along one axis, written
  from F.interpolate's formulas: output j reads source s = j (n_in - 1) / (n_out - 1)
  (align_corners=True) or (j + 0.5) n_in / n_out - 0.5 clamped at 0 (False), between
  floor(s) and the next pixel."""
  m = np.zeros((n_out, n_in))
  for j in range(n_out):
    if align_corners:
      s = j * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
      s = max((j + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(np.floor(s)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    m[j, i0] += 1 - (s - i0)
    m[j, i1] += s - i0
  return m


def resize_bilinear(x, size, align_corners: bool):
  """[B, H, W, C] -> [B, size[0], size[1], C] in float64 (PyTorch's bilinear)."""
  mh = resize_matrix(x.shape[1], size[0], align_corners)
  mw = resize_matrix(x.shape[2], size[1], align_corners)
  return np.einsum('ph,qw,bhwc->bpqc', mh, mw, np.asarray(x, np.float64))


def host_variables(abstract, seed: int = 0):
  """Initial-like variables made on the host from their shapes, with no compile: kernels
  ~ N(0, 1/fan_in) (LeCun, as Flax's default), biases and BN shifts 0, BN scales 1,
  running means 0 and variances 1. For tests that need some reasonable weights fast."""
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    fill = 1.0 if ('scale' in name or 'var' in name) else 0.0
    return np.full(leaf.shape, fill, np.float32)

  return jax.tree_util.tree_map_with_path(make, abstract)


def conv2d_torch(x, w, stride=(1, 1), bias=None):
  """PyTorch's Conv2d with padding (k - 1) // 2 on both sides and `stride`: output (i, j)
  is the sum over taps (p, q) of x[s_h i + p - pad_h, s_w j + q - pad_w] w[p, q] (zero
  outside the image); x [B, H, W, I], w [kh, kw, I, O]."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  (kh, kw), (sh, sw) = w.shape[:2], stride
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  h = (x.shape[1] + 2 * ph - kh) // sh + 1
  wd = (x.shape[2] + 2 * pw - kw) // sw + 1
  out = np.zeros((x.shape[0], h, wd, w.shape[-1]))
  for i in range(h):
    for j in range(wd):
      patch = xp[:, sh * i : sh * i + kh, sw * j : sw * j + kw]  # [B, kh, kw, I]
      out[:, i, j] = np.einsum('bpqi,pqio->bo', patch, w)
  return out if bias is None else out + bias


def instance_norm(x, scale, bias, eps=EPS):
  """InstanceNorm2d(affine=True): each image's and channel's mean and biased variance over
  its pixels."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def leaky_relu(x, slope=0.01):
  return np.where(x > 0, x, slope * x)


def conv_transpose2d(x, w, bias, stride):
  """PyTorch's ConvTranspose2d without padding: y[s_h i + p, s_w j + q] += x[i, j] w[p, q]
  (w [kh, kw, I, O]); its output is (H - 1) s_h + kh by (W - 1) s_w + kw."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  b, h, wd, _ = x.shape
  (kh, kw), (sh, sw) = w.shape[:2], stride
  y = np.zeros((b, (h - 1) * sh + kh, (wd - 1) * sw + kw, w.shape[-1]))
  for i in range(h):
    for j in range(wd):
      for p in range(kh):
        for q in range(kw):
          y[:, sh * i + p, sw * j + q] += x[:, i, j] @ w[p, q]
  return y if bias is None else y + bias
