"""Checkpoints that ship inside the package (each folder has a README.md with its card and reproduction command),
and a photo to try them on."""

import os


HERE = os.path.dirname(os.path.abspath(__file__))

#: The project's demo VAE: a diffusers `AutoencoderKL` (f=4, 4 latent channels) trained on the photo corpus
#: (`python -m modeling_lmd.corpus`).
DEMO_VAE = os.path.join(HERE, "demo-vae")

#: The shipped LMD checkpoint (`LMDForPreTraining`, lmd-small, 64 px): the default model of the pipeline examples
#: and the demo app, usable offline with no training. Trained on the photo corpus; the VAE inside it is `DEMO_VAE`.
DEMO_LMD = os.path.join(HERE, "demo-lmd")

#: A photo to try the models on, offline: Chelsea the cat (451 x 300), from scikit-image's sample data (CC0, by Stefan
#: van der Walt). It is one of the demo's validation photographs: no model here was trained on it.
EXAMPLE_PHOTO = os.path.join(HERE, "cat.jpg")
