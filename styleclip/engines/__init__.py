"""Editing engines: global directions, latent mapper, latent optimization, inversion. No UI code here."""
