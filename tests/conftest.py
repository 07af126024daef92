"""Every test sees 8 fake CPU devices (set before jax is imported anywhere)."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Identical programs compiled by several tests (and their subprocesses) compile once.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(os.path.dirname(__file__), '..', '.pytest_cache', 'jax_compilation_cache'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402

import ecam_jax  # noqa: E402,F401  (adds its XLA flags before any backend starts)


def pytest_report_header(config):
  return f'jax {jax.__version__}: {jax.device_count()} devices ({jax.devices()[0].platform})'


# The slowest test files, in seconds on 2 cores from a fresh clone (2026-12-06, the top 100
# tests' durations; the files trimmed since then, estimated). They are handed to the two
# workers first, longest first (pyproject: --dist loadfile --no-loadscope-reorder), so
# that the workers end together instead of one running a long file alone at the end. A
# file not listed follows, in collection order.
SLOW_FILES = {
  'test_multiprocess.py': 190,  # estimated: 245 before the elastic test lost a run
  'test_resume.py': 160,  # estimated: 213 at 3 epochs a run
  'test_config_choices.py': 136,
  'test_networks.py': 132,
  'test_experiments.py': 126,
  'test_steps.py': 125,  # estimated: 157 before the padded step used the plain U-Net
  'test_infer.py': 104,
  'test_bench.py': 95,  # estimated: 119 before the compile-only test used the plain U-Net
  'test_train.py': 90,  # estimated: 107 before two tests shared one run
  'test_export.py': 56,
  'test_multichannel.py': 47,
  'test_bench_report.py': 41,
  'test_multiclass.py': 33,
  'test_gradcam.py': 28,
  'test_validate.py': 24,
  'test_compatibility.py': 20,
  'test_resnet.py': 12,
}


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))  # stable: files stay whole
