"""Checkpoints that ship inside the package; each folder has a README.md with its card and reproduction command."""

import os


HERE = os.path.dirname(os.path.abspath(__file__))

#: The project's demo VAE: a diffusers `AutoencoderKL` (f=4, 4 latent channels) trained on the demo photographs.
DEMO_VAE = os.path.join(HERE, "demo-vae")

#: The shipped LMD checkpoint (`LMDForPreTraining`, lmd-small on the demo VAE, 64 px): the default model of the
#: pipeline examples and the demo app, usable offline with no training.
DEMO_LMD = os.path.join(HERE, "demo-lmd")
