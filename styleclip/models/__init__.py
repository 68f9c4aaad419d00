"""Networks shared by every engine: the StyleGAN2 generator, the CLIP wrapper, identity models, the registry."""
