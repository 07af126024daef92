"""The networks: each a Flax module and, beside it, its options and presets
(`<network>_options.py`, no jax), registered by name in `registry.py`; `build.py` builds
one from `config.model`. Importing this package imports no jax."""
