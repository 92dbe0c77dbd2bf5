"""sdfs: a FUSE filesystem that stores images as Stable Diffusion VAE latents."""

__version__ = "0.1.0"
