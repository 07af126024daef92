"""The paper's recipe (Xu et al., Section IV-C): every number a user may change.

Usage:
  python -m ecam_jax.main --config=configs/default.py --workdir=runs/x \
      --config.data.root=/data/Task07_Pancreas
  python -m ecam_jax.main --config=configs/default.py:variant=unet_coa ...

`get_config(arg)` takes `variant=NAME` (one of `ecam_jax.models.variants.VARIANTS`,
default `ec_cam_unet`). Dataset configs (msd.py, tcia.py, kits.py, cardiac.py, demo.py)
start from this one and change only what their dataset needs.
"""

import ml_collections
from ml_collections import config_dict

from ecam_jax.configuration import parse_arg
from ecam_jax.models.variants import apply_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, variant='ec_cam_unet')
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- data -----------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.root = ''  # the dataset folder; the layout below says what is inside
  data.source = ''  # where to get the dataset (shown when data.root is missing)
  data.phantom_cases = 0  # > 0 and root '': generate a synthetic phantom into WORKDIR
  data.phantom_size = 256  # in-plane size of the generated phantom volumes
  # The phantom's lesion (label 2; ecam_jax/data/phantom.py): the chance that a case has
  # one, a factor on its size, and how much darker than the target it is (HU)
  data.phantom_lesion_prob = 0.5
  data.phantom_lesion_scale = 1.0
  data.phantom_lesion_drop_hu = 35.0
  data.layout = 'msd'  # 'msd' | 'kits19' | 'paired'
  data.dataset = 'custom'  # names the paper's split sizes: see ecam_jax/data/splits.py
  # Unset ('' / None): what the msd layout's dataset.json declares, else CT and labels (0, 1).
  # An explicit value that disagrees with dataset.json is refused. config.json records the
  # resolved values.
  data.modality = ''  # 'CT': HU window; 'MR' (any non-CT): percentile clip + z-score per volume
  data.label_values = config_dict.placeholder(tuple)  # every value a label file may hold
  data.foreground_labels = config_dict.placeholder(tuple)  # None: every non-zero label value
  # True: the paper's setting, every foreground label merged into one class (1 logit,
  # sigmoid). False: data.classes are segmented apart (K + 1 logits, softmax; README,
  # "Several classes"); model.num_classes is then set from them.
  data.merge_foreground = True
  # Multi-class: 'name:value,...' (e.g. 'pancreas:1,tumour:2'); '': the foreground label
  # values with dataset.json's names ('label<value>' without dataset.json). A dataset config
  # may declare them; a binary run does not use them
  data.classes = ''
  # Multi-class: unions of classes also scored, 'name:value+value,...' (KiTS19's
  # 'kidney_and_tumour:1+2'); '' = none
  data.regions = ''
  data.hu_window = (-100.0, 240.0)  # CT clip window in HU, then scaled to [0, 1]
  data.mr_percentiles = (0.5, 99.5)  # MR clip percentiles before the z-score
  data.image_size = 512  # in-plane size after resizing (square)
  data.cache_dir = ''  # '' = WORKDIR/cache
  data.splits_file = ''  # a user's splits.json; overrides the sizes below
  data.split_sizes = config_dict.placeholder(tuple)
  data.split_ratios = (0.8, 0.05, 0.15)  # used when split_sizes is None
  data.split_seed = 0
  data.foreground_oversample = 0.0  # fraction of each epoch drawn from fg slices
  data.foreground_only = False  # the paper trains on all slices
  data.num_workers = 0  # grain worker processes (0: read in the main process)
  data.prefetch_batches = 4
  data.prepare_workers = 2  # processes used by --mode=prepare

  # --- augmentation (train only; runs on the device inside the step) ---------
  config.augment = aug = ml_collections.ConfigDict()
  aug.flip_prob = 0.5
  aug.rotate_degrees = 10.0  # uniform in [-x, x]
  aug.blur_prob = 0.5
  aug.blur_sigma = (0.1, 2.0)  # sigma uniform in this range (pixels)

  # --- model (docs/model.md) ----------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = 'ecam_unet'  # key of ecam_jax.models.MODELS
  model.variant = ''  # set by apply_variant; a label for logs
  model.base_channels = 64  # width of the first encoder level; the next ones are 2x, 4x, 8x, 16x
  # Logits per pixel: 1 = one merged foreground (sigmoid); set to len(classes) + 1 (softmax)
  # from data.classes when data.merge_foreground is False
  model.num_classes = 1
  model.use_cc = True  # CoA's channel correlation (eq. 5-7); needs attention='coa'
  model.use_sc = True  # CoA's spatial correlation (eq. 8-9); needs attention='coa'
  model.use_mus = True  # MuS: the ASPP block of the bottleneck
  model.use_ec = True  # EC: asymmetric (3x3 + 1x3 + 3x1) encoder convs
  model.use_dws = True  # DWS: side outputs (deep supervision), at model.side_outputs
  model.attention = 'coa'  # bottleneck attention: 'coa' | 'se' | 'cbam' | 'none'
  model.fusion = 'conv'  # attention + MuS: 'conv' (eq. 10) | 'add' | 'serial'
  # SC's logit scale: the paper's 1.0 (any number > 0), or 'rsqrt' = 1/sqrt(channels)
  model.attention_scale = config_dict.FieldReference(1.0, field_type=object)
  model.attention_impl = 'fused'  # 'fused' (jax.nn.dot_product_attention) | 'chunked' | 'naive'
  model.attention_chunk = 256  # 'chunked': query rows per block (smaller: less memory, slower)
  model.cc_hidden = 1  # features of CC's 1-D conv autoencoder
  model.aspp_rates = (6, 12, 18)  # MuS: dilation rates of its 3x3 branches
  model.aspp_1x1_branch = False  # MuS: DeepLabV3's extra 1x1 branch (not in the paper)
  model.aspp_image_pool = False  # MuS: DeepLabV3's image-pooling branch (not in the paper)
  model.side_outputs = ('bottleneck',)  # also 'decoder1'..'decoder3' (H/8..H/2)
  model.reduction = 16  # SE and CBAM: hidden width = channels / reduction
  model.cbam_kernel = 7  # CBAM: spatial attention conv size
  model.bn_momentum = 0.9  # BatchNorm running statistics: new = m * old + (1 - m) * batch
  model.bn_epsilon = 1e-5  # BatchNorm: added to the variance
  model.dtype = 'float32'  # compute dtype, 'float32' | 'bfloat16'; parameters stay float32
  model.remat = False  # jax.checkpoint per U-Net level
  # --- compared networks (Table I) ---
  # MSU-Net (docs/networks/msunet.md): kernel sizes of the two branches of every
  # multi-kernel block (odd; the reference's 3 and 7)
  model.msunet_small_kernel = 3
  model.msunet_large_kernel = 7
  # UNet++ (docs/networks/unetpp.md): heads on X(0,1), X(0,2), X(0,3) as side outputs
  # (loss.w_side); X(0,4)'s head is the prediction either way (the paper: "supervises each scale").
  # DA-Net (docs/networks/danet.md): its position and channel branches' auxiliary heads
  model.deep_supervision = True
  # UNet++: bilinear x2 upsampling with align_corners=True (4uiiurz1) or False (half-pixel)
  model.unetpp_align_corners = True
  # CE-Net, DeepLabV3+, DA-Net (docs/networks/resnet.md): depth of the ResNet encoder,
  # 18 | 34 | 50 | 101 (the variants set CE-Net's 34 and DeepLabV3+'s and DA-Net's 50;
  # 50 and 101 use Bottlenecks, 4x wider features)
  model.resnet_depth = 34
  # DeepLabV3+ and DA-Net: the ResNet's output stride, 8 | 16 (the stages past it dilate
  # instead of striding): DeepLabV3+'s 16, DA-Net's 8. DeepLabV3+'s ASPP rates are
  # model.aspp_rates at stride 16, doubled at 8 (the DeepLab papers' rule)
  model.output_stride = 16
  # Dropout rate in training: DeepLabV3+ after ASPP, DA-Net (Dropout2d) before each head,
  # SegFormer before its classifier (0.1 in all three references)
  model.dropout = 0.1
  # HRNet (docs/networks/hrnet.md), its width is model.base_channels (48: W48, 18: W18):
  # 'full' (HRNetV2: 4 Bottlenecks in stage 1, 1/4/3 modules in stages 2-4, 4 BasicBlocks
  # per branch) | 'small_v2' (HRNet-W18-Small-v2's depths: 2 Bottlenecks, 1/3/2 modules, 2)
  model.hrnet_size = 'full'
  # SegFormer (docs/networks/segformer.md): the MiT encoder and decoder, 'b0' | 'b2'
  model.segformer_size = 'b2'
  # SegFormer: stochastic depth, rising linearly over the blocks from 0 to this rate
  model.drop_path = 0.1

  # --- loss (eq. 11-13, 17) ---------------------------------------------------
  config.loss = loss = ml_collections.ConfigDict()
  loss.w_dice = 1.0
  loss.w_bce = 1.0
  loss.w_side = 1.0  # counts only where the model has side outputs
  loss.alpha = config_dict.placeholder(float)  # eq. 17
  loss.dice_smooth = 1.0
  # One weight per logit class, background first ((bg, fg) for a binary run): the
  # cross-entropy's per-pixel weight (a weighted mean, as PyTorch's) and the weights of the
  # foreground classes' mean soft Dice. None: all 1
  loss.class_weights = config_dict.placeholder(tuple)

  # --- optimisation and the loop ----------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 4  # global, over all devices and hosts
  train.epochs = 150
  train.max_steps = 0  # > 0: stop after this step (the lr schedule still spans the epochs)
  train.lr = 1e-5
  train.schedule = 'cosine'  # 'cosine' (to 0 over the run) | 'constant'
  train.warmup_steps = 0
  train.weight_decay = 1e-4
  train.decoupled_weight_decay = False  # False: PyTorch Adam (L2 in the gradient)
  train.grad_clip_norm = 0.0  # 0 = off
  train.adam_b1 = 0.9
  train.adam_b2 = 0.999
  train.adam_eps = 1e-8
  train.log_every_steps = 50
  train.eval_every_epochs = 1
  train.checkpoint_every_steps = 500
  train.checkpoint_every_seconds = 300.0  # also save when this much time has passed
  train.keep_checkpoints = 2
  train.nonfinite = 'stop'  # 'stop' | 'skip' a batch whose loss is not finite
  # Several processes agree every this many steps whether to stop (SIGTERM) or to save on
  # time: one small host all-gather each time (a single process checks every step).
  train.sync_every_steps = 10
  train.overlay_slices = 4  # validation slices drawn into the PNG at each eval
  # The best checkpoint has the highest validation DSC per volume of: 'mean' (over the
  # foreground classes; a binary run's one foreground), or a class or region name
  train.best_by = 'mean'

  # --- evaluation and prediction ------------------------------------------------
  config.eval = ev = ml_collections.ConfigDict()
  # Slices per inference or validation batch; rounded up to a multiple of the device count
  # (padding slices are never scored), so any device count works.
  ev.batch_size = 16
  ev.tta_flip = False
  # Binary runs: foreground where the predicted probability is > threshold (validation,
  # eval, predict). Multi-class runs take the most probable class instead.
  ev.threshold = 0.5
  # 3-D connected components kept in predicted masks: 0 = all (off); an integer k >= 1 =
  # the k largest; a fraction f in (0, 1) = each at least f times the largest's size.
  ev.keep_components = config_dict.FieldReference(0, field_type=object)
  ev.checkpoint = 'best'  # 'best' | 'latest' | a path
  ev.overlay_slices = 3  # per case, in WORKDIR/eval/overlays

  apply_variant(config, args['variant'])
  return config
