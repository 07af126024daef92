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


# The slowest test files, in seconds on 2 cores from a fresh clone (2026-12-06). They are
# handed to the two workers first, longest first (pyproject: --dist loadfile
# --no-loadscope-reorder), so that the workers end together instead of one running a
# long file alone at the end. A file not listed follows, in collection order.
SLOW_FILES = {
  'test_resume.py': 193,
  'test_multiprocess.py': 187,
  'test_config_choices.py': 148,
  'test_bench.py': 113,
  'test_networks.py': 110,
  'test_infer.py': 104,
  'test_steps.py': 97,
  'test_train.py': 77,
  'test_experiments.py': 70,
  'test_export.py': 62,
  'test_multichannel.py': 55,
  'test_compatibility.py': 49,
  'test_bench_report.py': 30,  # estimated (2026-12-06, under load: 36)
  'test_multiclass.py': 36,
  'test_resnet.py': 34,
  'test_gradcam.py': 33,
  'test_validate.py': 29,
  'test_attention.py': 28,
}


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))  # stable: files stay whole
