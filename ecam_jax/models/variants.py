"""Every network the paper trains, as switches of one U-Net (docs/model.md's table).

Plain Python with no imports: benchmarks/torch_ecam.py reads this file without jax.
"""

_OFF = dict(use_cc=False, use_sc=False, use_mus=False, use_ec=False, use_dws=False)
_FULL = dict(use_cc=True, use_sc=True, use_mus=True, use_ec=True, use_dws=True)


def _on(*names: str, attention: str = 'none', fusion: str = 'conv') -> dict:
  switches = dict(_OFF, attention=attention, fusion=fusion)
  switches.update({f'use_{n}': True for n in names})
  return switches


# name -> (model switches, what it is, where the paper reports it)
VARIANTS: dict[str, tuple[dict, str, str]] = {
  'unet': (_on(), 'plain U-Net (trained with Dice loss only)', 'Table I, II row 1'),
  'unet_cc': (_on('cc', attention='coa'), 'U-Net + channel-correlation attention', 'II, V'),
  'unet_sc': (_on('sc', attention='coa'), 'U-Net + spatial-correlation attention', 'II, V'),
  'unet_mus': (_on('mus'), 'U-Net + multi-scale ASPP block', 'II'),
  'unet_ec': (_on('ec'), 'U-Net with enhanced (asymmetric) encoder convs', 'II'),
  'unet_dws': (_on('dws'), 'U-Net + side output (deep supervision)', 'II'),
  'unet_coa': (_on('cc', 'sc', attention='coa'), 'U-Net + collaborative attention', 'II, V'),
  'unet_coag_musfu': (
    _on('cc', 'sc', 'mus', attention='coa'),
    'U-Net + CoAG-MuSFu (CoA and MuS fused by a 1x1 conv)',
    'II',
  ),
  'unet_coag_musfu_ec': (
    _on('cc', 'sc', 'mus', 'ec', attention='coa'),
    'U-Net + CoAG-MuSFu + enhanced convs',
    'II',
  ),
  'ec_cam_unet': (dict(_FULL, attention='coa', fusion='conv'), 'the full model', 'I, II'),
  'fusion_serial': (
    dict(_FULL, attention='coa', fusion='serial'),
    'full model, CoA then MuS in series ([8], [10])',
    'III',
  ),
  'fusion_add': (
    dict(_FULL, attention='coa', fusion='add'),
    'full model, CoA and MuS added ([14])',
    'III',
  ),
  'unet_se': (_on(attention='se'), 'U-Net + SE at the end of the encoder', 'V'),
  'unet_cbam': (_on(attention='cbam'), 'U-Net + CBAM at the end of the encoder', 'V'),
}

# The compared networks of Table I other than U-Net, each its own module under
# ecam_jax/models/baselines/ and selected like a variant (`:variant=unetpp`):
# name -> (config.model values, with `name` the key of ecam_jax.models.MODELS; what it is;
# where the paper reports it). The U-Net's switches are turned off for them.
NETWORKS: dict[str, tuple[dict, str, str]] = {
  'attention_unet': (
    dict(name='attention_unet', base_channels=64),
    'Attention U-Net: additive attention gates on all four skips (Oktay et al.)',
    'I',
  ),
  'msunet': (
    dict(name='msunet', base_channels=32),
    'MSU-Net: U-Net of multi-kernel (3x3 and 7x7) blocks (Su et al.)',
    'I',
  ),
  'unetpp': (
    dict(name='unetpp', base_channels=32, deep_supervision=True, unetpp_align_corners=True),
    'UNet++: nested dense skips, heads on X(0,1..4), predicts from X(0,4) (Zhou et al.)',
    'I',
  ),
  'cenet': (
    dict(name='cenet', base_channels=64, resnet_depth=34),
    'CE-Net: ResNet-34 encoder, DAC + RMP context extractor',
    'I',
  ),
  'deeplabv3plus': (
    dict(name='deeplabv3plus', base_channels=64, resnet_depth=50, output_stride=16),
    'DeepLabV3+: ResNet-50 at output stride 16, ASPP (6/12/18, image pooling), 48-ch decoder',
    'I',
  ),
  'danet': (
    # PAM's 4096 x 4096 map per image at 512x512: query blocks need the least memory.
    dict(
      name='danet',
      base_channels=64,
      resnet_depth=50,
      output_stride=8,
      deep_supervision=True,
      attention_impl='chunked',
    ),
    'DA-Net: dilated ResNet-50 at output stride 8, position and channel attention (Fu et al.)',
    'I',
  ),
  'hrnet': (
    dict(name='hrnet', base_channels=48, hrnet_size='full'),
    'HRNetV2-W48: four parallel resolutions fused repeatedly, concatenating head (Wang et al.)',
    'I',
  ),
  'segformer': (
    dict(name='segformer', segformer_size='b2'),
    'SegFormer MiT-B2: efficient self-attention, Mix-FFN, all-MLP decoder (Xie et al.)',
    'I',
  ),
}

# The paper's U-Net baseline (Table I, IV row 1) is trained with the Dice loss only.
_LOSS = {'unet': dict(w_dice=1.0, w_bce=0.0)}


def apply_variant(config, name: str) -> None:
  """Sets the ml_collections config's model (switches for a U-Net variant, the network and
  its settings for a compared network) and the loss where the paper differs to `name`."""
  if name in VARIANTS:
    settings = VARIANTS[name][0]
  elif name in NETWORKS:
    settings = {**_on(), **NETWORKS[name][0]}
  else:
    known = sorted(VARIANTS) + sorted(NETWORKS)
    raise ValueError(f'variant={name!r} is not known; expected one of {known}')
  config.model.update(settings)
  config.model.variant = name
  config.loss.update(_LOSS.get(name, {}))
