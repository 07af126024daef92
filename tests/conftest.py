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
