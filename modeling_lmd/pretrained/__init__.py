"""Checkpoints that ship inside the package; each folder has a README.md with its card and reproduction command."""

import os


#: The project's demo VAE: a diffusers `AutoencoderKL` (f=4, 4 latent channels) trained on the demo photographs.
DEMO_VAE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo-vae")
