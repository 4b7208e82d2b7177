"""Checkpoints that ship inside the package; each folder has a README.md with its card and reproduction command."""

import os


HERE = os.path.dirname(os.path.abspath(__file__))

#: The project's demo VAE: a diffusers `AutoencoderKL` (f=4, 4 latent channels) trained on the demo photographs.
DEMO_VAE = os.path.join(HERE, "demo-vae")

#: The shipped LMD checkpoint (`LMDForPreTraining`, lmd-small, 64 px): the default model of the pipeline examples
#: and the demo app, usable offline with no training. It carries its own VAE, the first demo VAE, which `DEMO_VAE`
#: has since replaced.
DEMO_LMD = os.path.join(HERE, "demo-lmd")
