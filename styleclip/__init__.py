"""StyleCLIP Studio: text-driven StyleGAN2 editing (global directions, latent mapper, latent optimization)."""

__version__ = "0.1.0"
