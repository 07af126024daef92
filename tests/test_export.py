"""--mode=export and python -m ecam_jax.export_check (docs/export.md).

One tiny EC-CaM-UNet run (a saved checkpoint of random weights with random BatchNorm
statistics, on a 1-case phantom at 32x32) is exported once through main; the folder, the
StableHLO artifact in a fresh process and the check on the phantom volume share it. ONNX
Runtime's logits are compared with the JAX model's (the training-time model: EC unfolded,
side heads built) for the U-Net, the full model, each attention type and each SC form, on
random and phantom slices. Every registered network is exported by tests/test_networks.py.
The graph pass and the converter's workarounds alone: test_conv_folding.py,
test_onnx_model.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ecam_jax import checkpoint, infer
from ecam_jax.configuration import load_config
from ecam_jax.data import phantom, volumes
from ecam_jax.data import source as data_source
from ecam_jax.errors import CheckpointError, ConfigError, DataError, ExportMismatch
from ecam_jax.export import (
  contract,
  conv_folding,
  folder,
  network,
  onnx_model,
  runtimes,
  segment,
)
from ecam_jax.models.build import build_model, init_variables
from ecam_jax.optim import make_optimizer
from ecam_jax.state import create_train_state

pytest.importorskip('jax2onnx', reason=f'the export dependencies: {onnx_model.INSTALL}')
onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE, BASE = 32, 4
OVERRIDES = {
  'data.image_size': SIZE,
  'model.base_channels': BASE,
  'data.phantom_cases': 0,
  'eval.tta_flip': True,
  'eval.keep_components': 1,
  'eval.batch_size': 8,
}


def _tolerance(expected: np.ndarray) -> float:
  return folder.TOLERANCE * max(1.0, float(np.abs(expected).max()))


def _perturbed(variables: dict, seed: int = 0) -> dict:
  """Random BatchNorm statistics and biases: a fresh model's (mean 0, var 1, bias 0) would
  make folding them trivially exact."""
  rng = np.random.default_rng(seed)

  def change(path, x):
    x = np.asarray(x)
    if "'var'" in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
    return (x + rng.normal(0, 0.2, x.shape)).astype(np.float32) if x.ndim == 1 else x

  return jax.tree_util.tree_map_with_path(change, variables)


def _config(variant: str, root: pathlib.Path | None = None, **model):
  config = load_config(ROOT / 'configs/demo.py', f'variant={variant}')
  for key, value in OVERRIDES.items():
    section, name = key.split('.')
    config[section][name] = value
  config.model.update(model)
  if root is not None:
    config.data.root = str(root)
  return config


def _phantom_slices(root: pathlib.Path, count: int = 6) -> np.ndarray:
  """The middle slices of the phantom's first case, preprocessed: [count, S, S, 1]."""
  image = sorted((root / 'imagesTr').glob('*.nii.gz'))[0]
  config = _config('unet')
  slices, _ = volumes.preprocess_image(image, config.data)
  mid = len(slices) // 2
  return slices[mid - count // 2 : mid + count - count // 2]


def _save_run(workdir: pathlib.Path, config, variables: dict, step: int = 7) -> None:
  """A workdir as training leaves it: the best checkpoint (these variables) and config.json."""
  model = build_model(config.model)
  tx, _ = make_optimizer(config.train, 1)
  state = jax.jit(lambda: create_train_state(model, tx, 0, SIZE))()
  state = state.replace(step=state.step + step, **variables)
  ckpts = checkpoint.Checkpoints(workdir)
  ckpts.save_best(state, {'selection': {'metric': 'val_dsc', 'value': 0.5}, 'val_dsc': 0.5})
  ckpts.close()
  (workdir / 'config.json').write_text(config.to_json_best_effort())


@pytest.fixture(scope='module')
def phantom_root(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp('phantom') / 'data'
  phantom.generate(root, 1, 0, size=32)
  return root


@pytest.fixture(scope='module')
def run(tmp_path_factory, phantom_root):
  """An exported tiny EC-CaM-UNet: (workdir, config, its variables, the main command's
  output)."""
  workdir = tmp_path_factory.mktemp('export') / 'run'
  config = _config('ec_cam_unet', phantom_root)
  variables = _perturbed(init_variables(build_model(config.model), 0, SIZE))
  _save_run(workdir, config, variables)
  command = [
    sys.executable,
    '-m',
    'ecam_jax.main',
    f'--config={ROOT}/configs/demo.py:variant=ec_cam_unet',
    f'--workdir={workdir}',
    '--mode=export',
    '--onnx_float16',
    f'--config.data.root={phantom_root}',
  ]
  command += [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  done = subprocess.run(command, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, config, variables, done.stdout


def test_export_writes_the_folder_and_its_contract(run):
  workdir, config, _, stdout = run
  out = workdir / 'export'
  assert f'exported to {out}' in stdout
  names = {p.name for p in out.iterdir()}
  assert names == {'model.onnx', 'model.float16.onnx', 'model.stablehlo', 'preprocessing.json'}
  assert not [p for p in workdir.iterdir() if p.name.startswith(('.tmp-', '.old-'))]
  terms = contract.read(out)
  (channel,) = terms['input']['channels']
  assert channel == {
    'channel': 0,
    'name': 'CT',
    'normalization': 'CT',
    'hu_window': [-160.0, 240.0],
    'formula': channel['formula'],
  }
  assert terms['input']['orientation']['axcodes'] == ['S', 'P', 'L']
  assert terms['input']['resize']['size'] == [SIZE, SIZE]
  output = terms['output']
  assert (output['channels'], output['activation']) == (1, 'sigmoid')
  assert output['decision']['threshold'] == 0.5
  assert output['label_values'] == [0, 1]
  assert output['tta_flip'] is True and output['keep_components']['value'] == 1
  onnx_entry = terms['artifacts']['model.onnx']
  assert onnx_entry['layout'] == 'NCHW'
  assert onnx_entry['input']['shape'] == ['batch', 1, SIZE, SIZE]
  assert onnx_entry['output']['shape'] == ['batch', 1, SIZE, SIZE]
  assert terms['artifacts']['model.stablehlo']['input']['shape'] == ['batch', SIZE, SIZE, 1]
  provenance = terms['provenance']
  assert provenance['checkpoint'] == {
    'which': 'best',
    'step': 7,
    'selection': {'metric': 'val_dsc', 'value': 0.5},
    'val_dsc': 0.5,
  }
  assert provenance['network']['ec_folded'] is True
  assert provenance['versions']['jax'] == jax.__version__
  assert provenance['config']['model']['variant'] == 'ec_cam_unet'
  differences = terms['verification']['max_abs_difference']
  scale = max(1.0, terms['verification']['max_abs_logit'])
  assert differences['model.onnx'] <= folder.TOLERANCE * scale
  assert differences['model.stablehlo'] <= folder.TOLERANCE * scale
  assert differences['model.float16.onnx'] <= 1e-2 * scale  # half precision


def test_shipped_onnx_has_batchnorm_folded_and_a_dynamic_batch(run):
  workdir = run[0]
  model = onnx.load(str(workdir / 'export' / 'model.onnx'))
  assert conv_folding.unfolded(model) == []
  terms = contract.read(workdir / 'export')
  # The encoder's EC convs are folded by fold_ec already; every other conv unit had a BN.
  assert terms['artifacts']['model.onnx']['batchnorm_folded_into_convs'] > 0
  assert {n.domain for n in model.graph.node} == {''}  # standard ONNX operators only
  (image,) = model.graph.input
  assert image.type.tensor_type.shape.dim[0].dim_param == 'batch'
  run_onnx = runtimes.onnx_runtime(workdir / 'export' / 'model.onnx')
  for batch in (1, 5):
    assert run_onnx(np.zeros((batch, SIZE, SIZE, 1), np.float32)).shape == (batch, SIZE, SIZE, 1)


# Each attention type and each SC form; the plain U-Net. (Every registered network, CE-Net
# with both converter workarounds among them, converts in tests/test_networks.py.)
NETWORK_CASES = {
  'unet': ('unet', {}),
  'ec_cam_unet': ('ec_cam_unet', {}),
  'coa_chunked': ('ec_cam_unet', {'attention_impl': 'chunked', 'attention_chunk': 16}),
  'coa_naive': ('unet_coa', {'attention_impl': 'naive'}),
  'se': ('unet_se', {}),
  'cbam': ('unet_cbam', {}),
}


@pytest.mark.parametrize('case', sorted(NETWORK_CASES))
def test_onnx_runtime_equals_jax_on_random_and_phantom_slices(case, phantom_root):
  variant, model = NETWORK_CASES[case]
  config = _config(variant, **model)
  full = build_model(config.model)
  variables = _perturbed(init_variables(full, 0, SIZE), seed=1)
  rng = np.random.default_rng(2)
  images = np.concatenate(
    [rng.uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32), _phantom_slices(phantom_root)]
  )
  expected = np.asarray(jax.jit(lambda x: full.apply(variables, x, train=False)['logits'])(images))
  net = network.from_variables(config, variables)
  model, folded = onnx_model.optimize(onnx_model.convert(net))
  assert folded > 0 and conv_folding.unfolded(model) == []
  session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  (logits,) = session.run(None, {'image': images.transpose(0, 3, 1, 2)})
  np.testing.assert_allclose(
    logits.transpose(0, 2, 3, 1), expected, rtol=0, atol=_tolerance(expected)
  )


def test_stablehlo_in_a_fresh_process_without_ecam_jax(run, tmp_path, phantom_root):
  workdir, config, variables, _ = run
  images = np.concatenate(
    [np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 1)), _phantom_slices(phantom_root)]
  ).astype(np.float32)
  np.save(tmp_path / 'images.npy', images)
  script = (
    'import sys, jax, numpy as np\n'
    "assert not any(m.startswith('ecam_jax') for m in sys.modules)\n"
    'exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))\n'
    'logits = exported.call(np.load(sys.argv[2]))\n'
    "assert not any(m.startswith('ecam_jax') for m in sys.modules)\n"
    'np.save(sys.argv[3], np.asarray(logits))\n'
  )
  hlo, out = workdir / 'export' / 'model.stablehlo', tmp_path / 'logits.npy'
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run(
    [sys.executable, '-c', script, str(hlo), str(tmp_path / 'images.npy'), str(out)],
    cwd=tmp_path,  # away from the repository; the script checks that ecam_jax is never imported
    env=env,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  full = build_model(config.model)
  expected = np.asarray(jax.jit(lambda x: full.apply(variables, x, train=False)['logits'])(images))
  np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=_tolerance(expected))


def test_export_check_on_the_phantom_agrees_and_matches_the_predictor(run, phantom_root, capsys):
  from ecam_jax import export_check

  workdir, config, variables, _ = run
  volume = sorted((phantom_root / 'imagesTr').glob('*.nii.gz'))[0]
  assert export_check.main(['--export', str(workdir / 'export'), '--input', str(volume)]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['within_tolerance'] and report['max_abs_logit_difference'] <= 1e-5
  assert report['label_agreement'] == 1.0 and report['foreground_dice'] == 1.0
  # The contract alone reproduces the project's own pipeline (infer.Predictor).
  terms = contract.read(workdir / 'export')
  image = volumes.load_nifti(volume)
  from_contract = segment.segment(
    terms, [image], runtimes.stablehlo_runtime(workdir / 'export' / 'model.stablehlo')
  )
  predictor = infer.Predictor(config, None, variables=variables)
  expected = predictor.segment_image(image)
  assert from_contract.labels.shape == expected.shape
  assert np.count_nonzero(from_contract.labels != expected) <= 2  # rounding at the threshold


def test_multiclass_export_contract_and_labels(phantom_root, tmp_path):
  """K + 1 logits (configs/demo_multiclass.py: the phantom's target and lesion): the
  contract says softmax, argmax and the label values; ONNX Runtime's logits equal JAX's;
  the contract reproduces the Predictor's label map."""
  config = load_config(ROOT / 'configs/demo_multiclass.py', 'variant=unet')
  for key, value in OVERRIDES.items():
    section, name = key.split('.')
    config[section][name] = value
  config.data.root = str(phantom_root)
  data_source.resolve_settings(config, tmp_path)
  assert config.model.num_classes == 3
  terms = contract.build(config, {}, {}, {})
  assert terms['output']['activation'].startswith('softmax')
  assert terms['output']['decision']['rule'] == 'argmax'
  assert terms['output']['label_values'] == [0, 1, 2]
  full = build_model(config.model)
  variables = _perturbed(init_variables(full, 0, SIZE), seed=7)
  net = network.from_variables(config, variables)
  images = _phantom_slices(phantom_root)
  expected = np.asarray(jax.jit(net.logits)(images))
  model, _ = onnx_model.optimize(onnx_model.convert(net))
  session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  (logits,) = session.run(None, {'image': images.transpose(0, 3, 1, 2)})
  assert logits.shape == (len(images), 3, SIZE, SIZE)
  np.testing.assert_allclose(
    logits.transpose(0, 2, 3, 1), expected, rtol=0, atol=_tolerance(expected)
  )
  image = volumes.load_nifti(sorted((phantom_root / 'imagesTr').glob('*.nii.gz'))[0])
  labels = segment.segment(terms, [image], jax.jit(net.logits)).labels
  expected_labels = infer.Predictor(config, None, variables=variables).segment_image(image)
  assert np.count_nonzero(labels != expected_labels) <= 2  # rounding at a tie


def test_missing_parts_are_clear_errors(run, tmp_path):
  from ecam_jax import export_check

  workdir, config, _, _ = run
  with pytest.raises(ConfigError, match=r"pip install -e '\.\[export\]'"):
    onnx_model.require('ecam_jax_no_such_module')
  with pytest.raises(CheckpointError, match='no best checkpoint'):
    folder.export(config, tmp_path / 'empty', 'best')
  assert not (tmp_path / 'empty' / 'export').exists()
  with pytest.raises(DataError, match='preprocessing.json does not exist'):
    export_check.check(tmp_path, tmp_path / 'x.nii.gz')
  with pytest.raises(DataError, match=r'x\.nii\.gz does not exist'):
    export_check.check(workdir / 'export', tmp_path / 'x.nii.gz')


def test_an_export_that_fails_verification_leaves_the_earlier_one(run, tmp_path, monkeypatch):
  workdir, config, _, _ = run
  target = tmp_path / 'export'
  target.mkdir()
  (target / 'earlier').write_text('kept')
  monkeypatch.setattr(folder, 'TOLERANCE', -1.0)  # no difference passes
  with pytest.raises(ExportMismatch, match='model.onnx: its logits differ'):
    folder.export(config, workdir, 'best', target)
  assert [p.name for p in tmp_path.iterdir()] == ['export']
  assert [p.name for p in target.iterdir()] == ['earlier']
