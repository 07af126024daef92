"""Every test sees 8 fake CPU devices (set before jax is imported anywhere)."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402


def pytest_report_header(config):
  return f'jax {jax.__version__}: {jax.device_count()} devices ({jax.devices()[0].platform})'
