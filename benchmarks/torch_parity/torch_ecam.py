"""EC-CaM-UNet in PyTorch, for the speed comparison with the JAX model (README.md here).

The same network as `ecam_jax.models` (docs: docs/model.md), module for
module and with exactly its parameter count, written the way a PyTorch user would:
NCHW modules (run with `memory_format=torch.channels_last` for speed), BatchNorm with
PyTorch's momentum 0.1 (Flax's 0.9) and eps 1e-5, SC through
`F.scaled_dot_product_attention`. EC blocks fold into single 3x3 convs with bias for
inference (`fold_ec`), as ACNet does.

Not part of the `ecam_jax` package, and reads none of its files (the variant table below
is this file's own): the project does not depend on torch.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (1, 2, 4, 8, 16)  # encoder level widths, in units of base_channels
BN_MOMENTUM = 0.1  # PyTorch's convention: Flax's momentum 0.9
BN_EPS = 1e-5


# The twin's own table of the 14 variants: name -> the switches of `UNet` below. It mirrors
# the variant table of docs/model.md (every switch on is EC-CaM-UNet, every switch off the
# plain U-Net). check_torch_ecam.py verifies the parameter counts of all 14 against the
# JAX model at base 16 and 64, and, with the JAX interpreter, these switches against the
# JAX variants' config.model (counts alone do not tell unet_sc from unet, nor fusion_add
# from fusion_serial): that catches any drift between the two tables.
_OFF = dict(use_cc=False, use_sc=False, use_mus=False, use_ec=False, use_dws=False)
_ALL = dict(use_cc=True, use_sc=True, use_mus=True, use_ec=True, use_dws=True)


def _on(*parts: str, attention: str = 'none', fusion: str = 'conv') -> dict:
  """The switches of a U-Net with only `parts` (cc, sc, mus, ec, dws) on."""
  return {**_OFF, 'attention': attention, 'fusion': fusion, **{f'use_{p}': True for p in parts}}


VARIANTS = {
  'unet': _on(),
  'unet_cc': _on('cc', attention='coa'),
  'unet_sc': _on('sc', attention='coa'),
  'unet_mus': _on('mus'),
  'unet_ec': _on('ec'),
  'unet_dws': _on('dws'),
  'unet_coa': _on('cc', 'sc', attention='coa'),
  'unet_coag_musfu': _on('cc', 'sc', 'mus', attention='coa'),
  'unet_coag_musfu_ec': _on('cc', 'sc', 'mus', 'ec', attention='coa'),
  'ec_cam_unet': {**_ALL, 'attention': 'coa', 'fusion': 'conv'},
  'fusion_serial': {**_ALL, 'attention': 'coa', 'fusion': 'serial'},
  'fusion_add': {**_ALL, 'attention': 'coa', 'fusion': 'add'},
  'unet_se': _on(attention='se'),
  'unet_cbam': _on(attention='cbam'),
}

# Loss weights (w_dice, w_bce, w_side) where a variant differs from (1, 1, 1):
# the paper's U-Net baseline is trained with the Dice loss only (as in the JAX configs).
VARIANT_LOSS = {'unet': (1.0, 0.0, 1.0)}


def _bn2d(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _bn1d(channels: int) -> nn.BatchNorm1d:
  return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvUnit(nn.Module):
  """Conv (no bias, "same" padding) -> BatchNorm -> ReLU."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: int = 1):
    super().__init__()
    pad = dilation * (kernel - 1) // 2
    self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
    self.bn = _bn2d(cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.relu(self.bn(self.conv(x)))


# EC's branches: name -> (kernel, padding).
EC_BRANCHES = {'square': ((3, 3), (1, 1)), 'hor': ((1, 3), (0, 1)), 'ver': ((3, 1), (1, 0))}


class AsymConv(nn.Module):
  """EC: parallel 3x3, 1x3 and 3x1 convs, each with its own BatchNorm, summed, ReLU.

  `fold()` replaces the branches by one 3x3 conv with bias (ACNet's structural
  re-parameterization, with the BatchNorms' running statistics): for inference.
  """

  def __init__(self, cin: int, cout: int):
    super().__init__()
    for name, (kernel, pad) in EC_BRANCHES.items():
      setattr(self, name, nn.Conv2d(cin, cout, kernel, padding=pad, bias=False))
      setattr(self, f'{name}_bn', _bn2d(cout))
    self.fused = None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.fused is not None:
      return F.relu(self.fused(x))
    total = self.square_bn(self.square(x))
    total = total + self.hor_bn(self.hor(x))
    total = total + self.ver_bn(self.ver(x))
    return F.relu(total)

  @torch.no_grad()
  def fold(self) -> None:
    """Each branch is BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s) with
    s = gamma / sqrt(var + eps); the 1x3 and 3x1 kernels sit in the middle row and
    column of a 3x3 one, so the three add up."""
    square = self.square
    kernel = torch.zeros_like(square.weight)  # [O, I, 3, 3]
    bias = torch.zeros(square.out_channels, dtype=kernel.dtype, device=kernel.device)
    for name, ((kh, kw), _) in EC_BRANCHES.items():
      conv, bn = getattr(self, name), getattr(self, f'{name}_bn')
      s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
      w = conv.weight * s[:, None, None, None]
      top, left = (3 - kh) // 2, (3 - kw) // 2
      kernel += F.pad(w, (left, 3 - kw - left, top, 3 - kh - top))
      bias += bn.bias - bn.running_mean * s
    fused = nn.Conv2d(square.in_channels, square.out_channels, 3, padding=1, bias=True)
    fused = fused.to(device=kernel.device, dtype=kernel.dtype)
    fused.weight.copy_(kernel)
    fused.bias.copy_(bias)
    for name in EC_BRANCHES:
      delattr(self, name)
      delattr(self, f'{name}_bn')
    self.fused = fused


def fold_ec(model: nn.Module) -> nn.Module:
  """A copy of `model` with every EC block folded (for inference, in eval mode)."""
  model = copy.deepcopy(model)
  for module in model.modules():
    if isinstance(module, AsymConv) and module.fused is None:
      module.fold()
  return model


class EncoderLevel(nn.Module):
  """[2x2 max-pool] then two conv units (EC blocks when `use_ec`)."""

  def __init__(self, cin: int, cout: int, pool: bool, use_ec: bool):
    super().__init__()
    self.pool = pool
    unit = AsymConv if use_ec else ConvUnit
    self.conv0 = unit(cin, cout)
    self.conv1 = unit(cout, cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pool:
      x = F.max_pool2d(x, 2)
    return self.conv1(self.conv0(x))


class DecoderLevel(nn.Module):
  """2x2 up-conv (stride 2, bias) halving the width, concat [skip, up], two conv units."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
    self.conv0 = ConvUnit(2 * cout, cout)
    self.conv1 = ConvUnit(cout, cout)

  def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    x = torch.cat([skip, self.up(x)], dim=1)
    return self.conv1(self.conv0(x))


class ChannelCorrelation(nn.Module):
  """CC (eq. 5-7): global average pool -> a 1-D conv autoencoder over the channel axis
  (conv k3 s1 -> BN -> ReLU -> conv k7 s2 -> BN -> ReLU -> transposed conv k7 s2 back
  to length C) -> sigmoid -> rescale F per channel."""

  def __init__(self, channels: int, hidden: int = 1):
    super().__init__()
    self.conv1 = nn.Conv1d(1, hidden, 3, padding=1, bias=False)
    self.bn1 = _bn1d(hidden)
    self.conv2 = nn.Conv1d(hidden, hidden, 7, stride=2, padding=3, bias=False)
    self.bn2 = _bn1d(hidden)
    half = (channels - 1) // 2 + 1  # the length after conv2
    output_padding = channels - ((half - 1) * 2 - 2 * 3 + 7)  # 1 for even C
    self.deconv = nn.ConvTranspose1d(
      hidden, 1, 7, stride=2, padding=3, output_padding=output_padding
    )

  def forward(self, f: torch.Tensor) -> torch.Tensor:
    b, c = f.shape[:2]
    t = f.mean(dim=(2, 3)).unsqueeze(1)  # theta: [B, 1, C]
    t = F.relu(self.bn1(self.conv1(t)))
    t = F.relu(self.bn2(self.conv2(t)))
    weights = torch.sigmoid(self.deconv(t))  # Theta: [B, 1, C]
    return f * weights.view(b, c, 1, 1)


def spatial_attention(f: torch.Tensor, value: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
  """SC (eq. 8-9): E = F as [B, HW, C]; out = softmax(scale E E^T) V with V = value as
  [B, HW, C]; one head, no projections, via scaled_dot_product_attention."""
  b, c, h, w = f.shape
  e = f.flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, HW, C]
  v = value.flatten(2).transpose(1, 2).unsqueeze(1)
  out = F.scaled_dot_product_attention(e, e, v, scale=scale)  # [B, 1, HW, C]
  return out.squeeze(1).transpose(1, 2).reshape(b, value.shape[1], h, w)


class CollaborativeAttention(nn.Module):
  """CoA (eq. 4): F_A = SC(F, value=CC(F)) + F; CC alone: CC(F) + F; SC alone:
  SC(F, value=F) + F."""

  def __init__(self, channels: int, use_cc: bool, use_sc: bool, scale: float | str, hidden: int):
    super().__init__()
    self.cc = ChannelCorrelation(channels, hidden=hidden) if use_cc else None
    self.use_sc = use_sc
    self.scale = 1.0 / math.sqrt(channels) if scale == 'rsqrt' else float(scale)

  def forward(self, f: torch.Tensor) -> torch.Tensor:
    value = self.cc(f) if self.cc is not None else f
    if self.use_sc:
      value = spatial_attention(f, value, self.scale)
    return value + f


class SqueezeExcitation(nn.Module):
  """SE: global average pool, dense C -> C/r (no bias), ReLU, dense -> C, sigmoid, scale."""

  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    hidden = max(channels // reduction, 1)
    self.fc1 = nn.Linear(channels, hidden, bias=False)
    self.fc2 = nn.Linear(hidden, channels, bias=False)

  def forward(self, f: torch.Tensor) -> torch.Tensor:
    z = torch.sigmoid(self.fc2(F.relu(self.fc1(f.mean(dim=(2, 3))))))
    return f * z[:, :, None, None]


class CBAM(nn.Module):
  """CBAM: channel attention (shared MLP over avg- and max-pooled vectors), then spatial
  attention (7x7 conv, no bias, + BN over [mean, max] across channels)."""

  def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
    super().__init__()
    hidden = max(channels // reduction, 1)
    self.fc1 = nn.Linear(channels, hidden, bias=False)
    self.fc2 = nn.Linear(hidden, channels, bias=False)
    self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
    self.bn = _bn2d(1)

  def forward(self, f: torch.Tensor) -> torch.Tensor:
    def mlp(z):
      return self.fc2(F.relu(self.fc1(z)))

    channel = torch.sigmoid(mlp(f.mean(dim=(2, 3))) + mlp(f.amax(dim=(2, 3))))
    f = f * channel[:, :, None, None]
    pooled = torch.cat([f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)], dim=1)
    return f * torch.sigmoid(self.bn(self.conv(pooled)))


class MultiScale(nn.Module):
  """MuS (ASPP): 3x3 atrous conv units (rates 6, 12, 18), concat, 1x1 conv unit -> C."""

  def __init__(self, channels: int, rates: tuple[int, ...] = (6, 12, 18)):
    super().__init__()
    self.branches = nn.ModuleList(ConvUnit(channels, channels, kernel=3, dilation=r) for r in rates)
    self.project = ConvUnit(len(rates) * channels, channels, kernel=1)

  def forward(self, f: torch.Tensor) -> torch.Tensor:
    return self.project(torch.cat([branch(f) for branch in self.branches], dim=1))


class Bottleneck(nn.Module):
  """CoAG-MuSFu (eq. 10) and its ablations: 'conv' fusion = 1x1 conv unit on
  concat(F_A, F_S); 'add' = F_A + F_S; 'serial' = MuS(A(F)); one part alone is applied
  by itself; with neither, F passes through."""

  def __init__(
    self,
    channels: int,
    attention: str,
    use_cc: bool,
    use_sc: bool,
    use_mus: bool,
    fusion: str,
    scale: float | str,
    cc_hidden: int,
  ):
    super().__init__()
    self.fusion = fusion
    if attention == 'coa':
      self.attention = CollaborativeAttention(
        channels, use_cc=use_cc, use_sc=use_sc, scale=scale, hidden=cc_hidden
      )
    elif attention == 'se':
      self.attention = SqueezeExcitation(channels)
    elif attention == 'cbam':
      self.attention = CBAM(channels)
    elif attention == 'none':
      self.attention = None
    else:
      raise ValueError(f'attention={attention!r}')
    self.mus = MultiScale(channels) if use_mus else None
    both = self.attention is not None and self.mus is not None
    self.fuse = ConvUnit(2 * channels, channels, kernel=1) if both and fusion == 'conv' else None

  def forward(self, f: torch.Tensor) -> torch.Tensor:
    if self.mus is None:
      return self.attention(f) if self.attention is not None else f
    if self.attention is None:
      return self.mus(f)
    if self.fusion == 'serial':
      return self.mus(self.attention(f))
    f_a, f_s = self.attention(f), self.mus(f)
    if self.fusion == 'add':
      return f_a + f_s
    return self.fuse(torch.cat([f_a, f_s], dim=1))


class UNet(nn.Module):
  """[B, in_channels, H, W] (H, W multiples of 16) -> {'logits': [B, K, H, W],
  'side_logits': list of [B, K, H, W]} (side output on the fused bottleneck when DWS)."""

  def __init__(
    self,
    base_channels: int = 64,
    in_channels: int = 1,
    num_classes: int = 1,
    use_cc: bool = True,
    use_sc: bool = True,
    use_mus: bool = True,
    use_ec: bool = True,
    use_dws: bool = True,
    attention: str = 'coa',
    fusion: str = 'conv',
    attention_scale: float | str = 1.0,  # or 'rsqrt': 1/sqrt(C)
    cc_hidden: int = 1,
  ):
    super().__init__()
    widths = [base_channels * w for w in WIDTHS]
    cins = [in_channels, *widths[:-1]]
    self.encoder = nn.ModuleList(
      EncoderLevel(cin, cout, pool=i > 0, use_ec=use_ec)
      for i, (cin, cout) in enumerate(zip(cins, widths, strict=True))
    )
    self.bottleneck = Bottleneck(
      widths[-1],
      attention=attention,
      use_cc=use_cc,
      use_sc=use_sc,
      use_mus=use_mus,
      fusion=fusion,
      scale=attention_scale,
      cc_hidden=cc_hidden,
    )
    self.side = nn.Conv2d(widths[-1], num_classes, 1) if use_dws else None
    rev = widths[::-1]
    self.decoder = nn.ModuleList(
      DecoderLevel(cin, cout) for cin, cout in zip(rev[:-1], rev[1:], strict=True)
    )
    self.head = nn.Conv2d(base_channels, num_classes, 1)

  def forward(self, x: torch.Tensor) -> dict:
    h, w = x.shape[-2:]
    if h % 16 or w % 16:
      raise ValueError(f'input of {h}x{w}: a depth-5 U-Net needs multiples of 16')
    skips = []
    for level in self.encoder:
      x = level(x)
      skips.append(x)
    x = self.bottleneck(skips.pop())
    side_logits = []
    if self.side is not None:
      side = self.side(x)
      side_logits.append(F.interpolate(side, size=(h, w), mode='bilinear', align_corners=False))
    for level in self.decoder:
      x = level(x, skips.pop())
    return {'logits': self.head(x), 'side_logits': side_logits}


def build(variant: str = 'ec_cam_unet', base_channels: int = 64, **kwargs) -> UNet:
  """The network of a row of docs/model.md's variant table."""
  if variant not in VARIANTS:
    raise ValueError(f'variant={variant!r}; expected one of {sorted(VARIANTS)}')
  return UNet(base_channels=base_channels, **VARIANTS[variant], **kwargs)


def count_params(model: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
  return sum(p.numel() for p in model.parameters())


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
  """Soft Dice over every pixel of the batch (eq. 11), p = sigmoid(logits)."""
  p = torch.sigmoid(logits)
  intersection = (p * labels).sum()
  return 1.0 - (2.0 * intersection + smooth) / (p.sum() + labels.sum() + smooth)


def total_loss(outputs: dict, labels: torch.Tensor, weights=(1.0, 1.0, 1.0)) -> torch.Tensor:
  """w_dice Dice(main) + w_bce BCE(main) + w_side mean_k BCE(side_k) (eq. 13)."""
  w_dice, w_bce, w_side = weights
  logits = outputs['logits']
  total = w_dice * dice_loss(logits, labels)
  if w_bce:
    total = total + w_bce * F.binary_cross_entropy_with_logits(logits, labels)
  sides = outputs['side_logits']
  if sides:
    side = sum(F.binary_cross_entropy_with_logits(s, labels) for s in sides) / len(sides)
    total = total + w_side * side
  return total
