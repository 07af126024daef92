"""The paper's recipe (Xu et al., Section IV-C): every number a user may change.

Usage:
  python -m ecam_jax.main --config=configs/default.py --workdir=runs/x \
      --config.data.root=/data/Task07_Pancreas
  python -m ecam_jax.main --config=configs/default.py:variant=unet_coa ...

`get_config(arg)` takes `variant=NAME` (one of `ecam_jax.models.registry.VARIANTS`,
default `ec_cam_unet`) and `recipe=NAME` (`paper`, the default, or `nnunet`:
ecam_jax/recipes.py), e.g. `configs/msd.py:variant=nnunet2d,recipe=nnunet`. Dataset configs
(msd.py, tcia.py, kits.py, cardiac.py, demo.py) start from this one and change only what
their dataset needs (and what the paper's recipe does differently for it).
"""

import ml_collections
from ml_collections import config_dict

from ecam_jax.configuration import parse_arg
from ecam_jax.models.registry import apply_variant
from ecam_jax.recipes import apply_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, variant='ec_cam_unet', recipe='paper')
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The training recipe that set the loss, optimizer, schedule, sampling and augmentation
  # keys below: 'paper' (these defaults) or 'nnunet' (ecam_jax/recipes.py)
  config.recipe = 'paper'

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
  data.layout = 'msd'  # 'msd' | 'nnunet' (nnU-Net v2 raw) | 'kits19' | 'paired'
  data.dataset = 'custom'  # names the paper's split sizes: see ecam_jax/data/splits.py
  # Unset ('' / None): what the msd layout's dataset.json declares, else CT and labels (0, 1).
  # An explicit value that disagrees with dataset.json is refused. config.json records the
  # resolved values.
  data.modality = ''  # one channel: 'CT': HU window; 'MR' (any non-CT): percentile clip + z-score
  # The name of each input channel, in order, as dataset.json names them ('CT', 'T2', 'ADC',
  # ...); each is normalized by its name as nnU-Net reads them: 'CT' as CT (see
  # ct_normalization), 'noNorm' not at all, 'rescale_to_0_1' to [0, 1], 'rgb_to_0_1' / 255,
  # any other (MRI, T2, ADC, zscore) clipped at mr_percentiles and z-scored per volume.
  # Unset: dataset.json's, else (modality,). model.in_channels is set from it.
  data.channels = config_dict.placeholder(tuple)
  # CT channels: 'window' (hu_window scaled to [0, 1], the paper's) | 'nnunet' (clipped to the
  # 0.5 and 99.5 percentiles of the training cases' foreground intensities and z-scored with
  # their mean and std, computed once with the cache and recorded in config.json)
  data.ct_normalization = 'window'
  data.ct_statistics = config_dict.placeholder(tuple)  # 'nnunet': (p0.5, p99.5, mean, std); set
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
  # A user's splits.json ({"train", "val", "test"}), or nnU-Net's splits_final.json (a list
  # of {"train", "val"}, one per fold, of which data.fold is used); overrides the sizes below
  data.splits_file = ''
  # k-fold cross-validation: '' = the train/val/test split below; '0' .. folds - 1 = that
  # fold of the dataset's folds (made once into the cache folder's splits_final.json; the
  # test split below stays held out); 'all' = train and validate on every non-test case
  data.fold = ''
  data.folds = 5
  data.split_sizes = config_dict.placeholder(tuple)
  data.split_ratios = (0.8, 0.05, 0.15)  # used when split_sizes is None
  data.split_seed = 0
  data.foreground_oversample = 0.0  # fraction of each epoch drawn from fg slices (nnU-Net: 0.33)
  data.foreground_only = False  # the paper trains on all slices
  data.num_workers = 0  # grain worker processes (0: read in the main process)
  data.prefetch_batches = 4
  data.prepare_workers = 2  # processes used by --mode=prepare

  # --- augmentation (train only; runs on the device inside the step) ---------
  config.augment = aug = ml_collections.ConfigDict()
  # 'paper': the flips, rotations and blur below; 'nnunet': nnU-Net v2's 2-D augmentation
  # with its own probabilities and ranges (ecam_jax/data/nnunet_augment.py)
  aug.pipeline = 'paper'
  aug.flip_prob = 0.5
  aug.rotate_degrees = 10.0  # uniform in [-x, x]
  aug.blur_prob = 0.5
  aug.blur_sigma = (0.1, 2.0)  # sigma uniform in this range (pixels)

  # --- model -----------------------------------------------------------------------------
  # config.model is the variant's network (`name`), the variant's name and every option of
  # that network, set by the variant: ecam_jax/models/registry.py lists the networks, and
  # each network's options (defaults, allowed values, what they do) are declared beside it
  # (the U-Net's in ecam_jax/models/unet_options.py; docs/networks/). Override any of them,
  # e.g. --config.model.base_channels=32; a key that is not an option of the network is
  # refused, naming the network's options.

  # --- loss (eq. 11-13, 17) ---------------------------------------------------
  config.loss = loss = ml_collections.ConfigDict()
  loss.w_dice = 1.0
  loss.w_bce = 1.0
  loss.w_side = 1.0  # counts only where the model has side outputs
  loss.alpha = config_dict.placeholder(float)  # eq. 17
  loss.dice_smooth = 1.0
  # Side outputs: 'paper' (w_side x the mean BCE/CE of the side outputs, at full resolution)
  # | 'nnunet' (Dice + CE on every output against the labels downsampled to its size,
  # weighted 1/2**i from full resolution down, the lowest 0, normalized to sum 1)
  loss.deep_supervision = 'paper'
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
  train.schedule = 'cosine'  # 'cosine' (to 0 over the run) | 'poly' (per epoch) | 'constant'
  train.poly_exponent = 0.9  # 'poly': lr * (1 - epoch / epochs) ** poly_exponent
  train.optimizer = 'adam'  # 'adam' | 'sgd'
  train.momentum = 0.99  # 'sgd'
  train.nesterov = True  # 'sgd'
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
  # the k largest; a fraction f in (0, 1) = each at least f times the largest's size; one
  # value for every class, or a tuple of one per class. None: what --mode=crossval chose
  # when predicting with --folds (WORKDIR/crossval/postprocessing.json), else 0.
  ev.keep_components = config_dict.FieldReference(None, field_type=object)
  ev.checkpoint = 'best'  # 'best' | 'latest' | a path
  ev.overlay_slices = 3  # per case, in WORKDIR/eval/overlays

  apply_variant(config, args['variant'])
  apply_recipe(config, args['recipe'])
  return config
