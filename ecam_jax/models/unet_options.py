"""The U-Net's options (unet.py; docs/model.md) and the 14 networks of the paper's
Tables II-V as its presets: every switch on is EC-CaM-UNet, every switch off the plain
U-Net."""

import dataclasses

from ecam_jax.errors import ConfigError
from ecam_jax.models.options import (
  Network,
  Options,
  Preset,
  attention_chunk,
  attention_impl,
  option,
)

SIDE_OUTPUTS = ('bottleneck', 'decoder1', 'decoder2', 'decoder3')


@dataclasses.dataclass(frozen=True)
class UNetOptions(Options):
  """Defaults: the full model, EC-CaM-UNet, as docs/model.md reads the paper."""

  base_channels: int = option(
    64, 'width of the first encoder level; the next ones are 2x, 4x, 8x, 16x', interval='[1, inf)'
  )
  use_cc: bool = option(True, "CoA's channel correlation (eq. 5-7); needs attention='coa'")
  use_sc: bool = option(True, "CoA's spatial correlation (eq. 8-9); needs attention='coa'")
  use_mus: bool = option(True, 'MuS: the ASPP block of the bottleneck')
  use_ec: bool = option(True, 'EC: asymmetric (3x3 + 1x3 + 3x1) encoder convs')
  use_dws: bool = option(True, 'DWS: side outputs (deep supervision), at side_outputs')
  attention: str = option('coa', 'the bottleneck attention', choices=('coa', 'se', 'cbam', 'none'))
  fusion: str = option(
    'conv',
    "attention and MuS combined: 'conv' (eq. 10), 'add' ([14]) or 'serial' ([8], [10])",
    choices=('conv', 'add', 'serial'),
  )
  attention_scale: float | str = option(
    1.0, "SC's logit scale: the paper's 1.0 (any number > 0), or 'rsqrt' = 1/sqrt(channels)"
  )
  attention_impl: str = attention_impl('fused')
  attention_chunk: int = attention_chunk()
  cc_hidden: int = option(1, "features of CC's 1-D conv autoencoder", interval='[1, inf)')
  aspp_rates: tuple[int, ...] = option((6, 12, 18), 'MuS: dilation rates of its 3x3 branches')
  aspp_1x1_branch: bool = option(False, "MuS: DeepLabV3's extra 1x1 branch (not in the paper)")
  aspp_image_pool: bool = option(False, "MuS: DeepLabV3's image-pooling branch (not in the paper)")
  side_outputs: tuple[str, ...] = option(
    ('bottleneck',), f'where DWS side outputs are, of {SIDE_OUTPUTS} (decoder1: H/8 .. 3: H/2)'
  )
  reduction: int = option(
    16, 'SE and CBAM: hidden width = channels / reduction', interval='[1, inf)'
  )
  cbam_kernel: int = option(7, 'CBAM: spatial attention conv size (odd)', interval='[1, inf)')

  TRAINING_ONLY = {'use_dws': False}

  def input_multiple(self) -> int:
    return 16  # four 2x2 pools

  def has_ec_blocks(self) -> bool:
    return self.use_ec

  def check(self) -> None:
    if self.attention == 'coa' and not (self.use_cc or self.use_sc):
      raise ConfigError("config.model.attention='coa' needs use_cc or use_sc (or both)")
    if self.attention != 'coa' and (self.use_cc or self.use_sc):
      raise ConfigError(
        f"config.model.use_cc/use_sc are parts of CoA; they need attention='coa', not "
        f'{self.attention!r}'
      )
    scale = self.attention_scale
    if not (scale == 'rsqrt' or (not isinstance(scale, (str, bool)) and scale > 0)):
      raise ConfigError(f"config.model.attention_scale={scale!r}; expected a number > 0 or 'rsqrt'")
    for name in self.side_outputs:
      if name not in SIDE_OUTPUTS:
        raise ConfigError(f'config.model.side_outputs has {name!r}; expected one of {SIDE_OUTPUTS}')
    if len(set(self.side_outputs)) != len(self.side_outputs):
      raise ConfigError(f'config.model.side_outputs={self.side_outputs} repeats a name')
    if not self.aspp_rates or min(self.aspp_rates) < 1:
      raise ConfigError(
        f'config.model.aspp_rates={self.aspp_rates}; expected dilation rates, integers >= 1'
      )
    if self.cbam_kernel % 2 == 0:
      raise ConfigError(f'config.model.cbam_kernel={self.cbam_kernel}; expected an odd kernel size')


_OFF = dict(use_cc=False, use_sc=False, use_mus=False, use_ec=False, use_dws=False)


def _on(*parts: str, attention: str = 'none', fusion: str = 'conv') -> dict:
  """The switches of a U-Net with only `parts` (cc, sc, mus, ec, dws) on."""
  return {**_OFF, 'attention': attention, 'fusion': fusion, **{f'use_{p}': True for p in parts}}


# The paper's U-Net baseline (Table I, IV row 1) is trained with the Dice loss only.
_DICE_ONLY = {'w_dice': 1.0, 'w_bce': 0.0}

PRESETS = {
  'unet': Preset(
    'plain U-Net (trained with Dice loss only)', 'Table I, II row 1', _on(), _DICE_ONLY
  ),
  'unet_cc': Preset('U-Net + channel-correlation attention', 'II, V', _on('cc', attention='coa')),
  'unet_sc': Preset('U-Net + spatial-correlation attention', 'II, V', _on('sc', attention='coa')),
  'unet_mus': Preset('U-Net + multi-scale ASPP block', 'II', _on('mus')),
  'unet_ec': Preset('U-Net with enhanced (asymmetric) encoder convs', 'II', _on('ec')),
  'unet_dws': Preset('U-Net + side output (deep supervision)', 'II', _on('dws')),
  'unet_coa': Preset('U-Net + collaborative attention', 'II, V', _on('cc', 'sc', attention='coa')),
  'unet_coag_musfu': Preset(
    'U-Net + CoAG-MuSFu (CoA and MuS fused by a 1x1 conv)',
    'II',
    _on('cc', 'sc', 'mus', attention='coa'),
  ),
  'unet_coag_musfu_ec': Preset(
    'U-Net + CoAG-MuSFu + enhanced convs', 'II', _on('cc', 'sc', 'mus', 'ec', attention='coa')
  ),
  'ec_cam_unet': Preset('the full model', 'I, II'),
  'fusion_serial': Preset(
    'full model, CoA then MuS in series ([8], [10])', 'III', {'fusion': 'serial'}
  ),
  'fusion_add': Preset('full model, CoA and MuS added ([14])', 'III', {'fusion': 'add'}),
  'unet_se': Preset('U-Net + SE at the end of the encoder', 'V', _on(attention='se')),
  'unet_cbam': Preset('U-Net + CBAM at the end of the encoder', 'V', _on(attention='cbam')),
}

NETWORK = Network(UNetOptions, PRESETS, 'ecam_jax.models.unet:UNet')
