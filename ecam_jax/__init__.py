"""ecam-jax: EC-CaM-UNet (Xu et al.) for medical image segmentation in JAX/Flax."""

__version__ = '0.1.0'
