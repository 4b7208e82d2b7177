import re

from setuptools import find_packages, setup


def long_description() -> str:
    """The README as the package index shows it: its images and links to files of the repository point nowhere
    there, so images are dropped and relative links keep only their text."""
    with open("README.md", encoding="utf-8") as handle:
        text = handle.read()
    text = re.sub(r"<img [^>]*>|!\[[^\]]*\]\([^)]*\)", "", text)
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)]*\)", r"\1", text)


setup(
    name="modeling-lmd",
    version="0.2.0",
    description="LMD (Latent Masking Diffusion): masked-latent image pre-training on a frozen diffusers VAE, "
    "Hugging Face native.",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    url="https://arxiv.org/abs/2312.07971",
    project_urls={"Paper": "https://arxiv.org/abs/2312.07971"},
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    packages=find_packages(include=["modeling_lmd", "modeling_lmd.*"]),
    include_package_data=True,
    # The project-trained demo checkpoints ship inside the package (the offline defaults), with the card template
    # (modeling_lmd/model_card.md links to the repository's top-level model_card.md; a wheel holds its content).
    package_data={"modeling_lmd": ["pretrained/*.jpg", "pretrained/*/*", "model_card.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "transformers>=5",
        "diffusers",
        "accelerate",
        "datasets",
        "safetensors",
        "huggingface_hub",
        "pillow",
        "numpy",
        "jinja2",  # renders model_card.md
        "tqdm",
    ],
    extras_require={
        # The classical inpainting references next to LMD in every evaluation (OpenCV's Telea and Navier-Stokes,
        # scikit-image's biharmonic).
        "eval": ["opencv-python-headless", "scikit-image"],
        # Sources of the offline demo photographs (they ship inside these packages), and the main job's references.
        "demo": ["scikit-image", "scikit-learn", "matplotlib", "opencv-python-headless"],
        # LoRA fine-tuning in examples/finetune_classification.py (--lora_r).
        "peft": ["peft"],
        # The Gradio demo app (app.py); its example photos come from scikit-image.
        "app": ["gradio>=6", "scikit-image"],
        # gradio and playwright for tests/test_app.py; the browser test uses the system Chromium (Debian's
        # `chromium` package), never a browser downloaded by `playwright install`.
        "test": ["pytest", "hypothesis", "scikit-image", "scikit-learn", "matplotlib", "opencv-python-headless",
                 "tensorboard", "gradio>=6", "playwright", "peft"],
    },
)
