from setuptools import find_packages, setup

setup(
    name="modeling-lmd",
    version="0.2.0",
    description="LMD (Latent Masking Diffusion): masked-latent image pre-training on a frozen diffusers VAE, Hugging Face native.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["modeling_lmd", "modeling_lmd.*"]),
    include_package_data=True,
    # The project-trained demo checkpoints ship inside the package (the offline defaults), with the card template.
    package_data={"modeling_lmd": ["pretrained/*/*", "model_card_template.md"]},
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
        # Sources of the offline demo photographs (they ship inside these packages).
        "demo": ["scikit-image", "scikit-learn", "matplotlib"],
        # The Gradio demo app (app.py); its example photos come from scikit-image.
        "app": ["gradio>=6", "scikit-image"],
        # gradio and playwright for tests/test_app.py; the browser test uses the system Chromium (Debian's
        # `chromium` package), never a browser downloaded by `playwright install`.
        "test": ["pytest", "scikit-image", "scikit-learn", "matplotlib", "tensorboard", "gradio>=6", "playwright"],
    },
)
