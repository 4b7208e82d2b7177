"""The model card `train_lmd.py` writes and pushes: rendered from the repository's top-level `model_card.md` with the
model's config, the training arguments and the metrics, each handed over whole. Its metadata carries the licence
and a `model-index` of the held-out PSNRs, so the Hub shows them."""

from __future__ import annotations

import math
import os
from typing import Any


TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card.md")
#: `arxiv:2312.07971` lists the checkpoint on the paper's Hub page.
CARD_TAGS = ["lmd", "masked-image-modeling", "image-to-image", "arxiv:2312.07971"]

#: The metrics that go into the card's `model-index` (what the Hub shows): LMD with its baseline and its ceiling.
MODEL_INDEX_METRICS = {
    "masked_psnr": "Hidden-region PSNR (dB), LMD, leak-free",
    "biharmonic_psnr": "Hidden-region PSNR (dB), classical: biharmonic inpainting",
    "telea_psnr": "Hidden-region PSNR (dB), classical: Telea inpainting",
    "pixel_mean_fill_psnr": "Hidden-region PSNR (dB), baseline: mean-colour fill",
    "vae_psnr": "Hidden-region PSNR (dB), ceiling: the VAE alone",
}

#: How the card names the evaluation metrics (`eval_<name>` in `metrics`), in this order.
METRIC_LABELS = {
    "loss": "Latent MSE (the training objective, see Loss above)",
    "masked_psnr": "PSNR (dB), LMD, leak-free (hidden pixels never seen)",
    "masked_psnr_latent_masking": "PSNR (dB), LMD, whole image encoded, latents masked (paper's setting)",
    "pixel_mean_fill_psnr": "PSNR (dB), baseline: hidden pixels painted with the visible mean colour",
    "latent_mean_fill_psnr": "PSNR (dB), baseline: hidden latents set to the visible mean latent",
    "biharmonic_psnr": "PSNR (dB), classical inpainting: scikit-image's biharmonic",
    "telea_psnr": "PSNR (dB), classical inpainting: OpenCV's Telea",
    "navier_stokes_psnr": "PSNR (dB), classical inpainting: OpenCV's Navier-Stokes",
    "vae_psnr": "PSNR (dB), ceiling: the VAE's own reconstruction",
    "masked_ssim": "SSIM, LMD, leak-free",
    "biharmonic_ssim": "SSIM, biharmonic",
    "telea_ssim": "SSIM, Telea",
    "pixel_mean_fill_ssim": "SSIM, mean-colour fill",
    "vae_ssim": "SSIM, the VAE alone",
}


def render_model_card(
    model, training_args, metrics: dict[str, Any], facts: dict[str, Any], template_path: str | None = None
) -> str:
    """The card's text.

    Args:
        model: the trained `LMDForPreTraining` (its config and parameter counts are quoted).
        training_args: the run's `LMDTrainingArguments`.
        metrics: what `train_lmd.py` writes to `metrics.json` (`eval_*` entries are tabulated).
        facts: what only the script knows: `repo_id`, `vae_description`, `dataset_description`, `dataset_tag`
            (a Hub dataset id or `None`), `model_id` (what the usage snippet loads), `augmentation`, `train_samples`, `global_step`, `total_batch_size`,
            `has_reconstructions`, `has_curves`, `base_model` (the VAE's Hub id, or `None`) and `license` (of the
            weights; default `apache-2.0`, the package's).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model_name = facts["repo_id"].split("/")[-1]
    dataset_type = facts.get("dataset_tag") or "imagefolder"
    eval_results = [
        EvalResult(task_type="image-to-image", task_name="Masked image reconstruction", dataset_type=dataset_type,
                   dataset_name=facts["dataset_description"].strip("`"), dataset_split="validation",
                   metric_type="psnr", metric_name=f"{label}, mask ratio {model.config.mask_ratio}",
                   metric_value=round(float(metrics[f"eval_{name}"]), 2))
        for name, label in MODEL_INDEX_METRICS.items() if math.isfinite(metrics.get(f"eval_{name}", math.nan))
    ]
    card_data = ModelCardData(
        license=facts.get("license") or "apache-2.0",
        library_name="transformers",
        # No pipeline_tag: the Hub's tags name transformers' own tasks, and this model's task is the custom
        # "lmd-reconstruction" (transformers 5 refuses to build the removed "image-to-image" task).
        tags=list(CARD_TAGS),
        datasets=[facts["dataset_tag"]] if facts.get("dataset_tag") else None,
        base_model=facts.get("base_model"),
        model_name=model_name,
        eval_results=eval_results or None,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    metrics_table = [(label, f"{metrics[f'eval_{name}']:.4g}") for name, label in METRIC_LABELS.items()
                     if math.isfinite(metrics.get(f"eval_{name}", math.nan))]
    card = ModelCard.from_template(
        card_data,
        template_path=template_path or TEMPLATE,
        model_name=model_name,
        config=model.config,
        args=training_args,
        facts=facts,
        lr_scheduler_type=getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
        trainable_parameters=f"{trainable:,}",
        vae_parameters=f"{frozen:,}",
        metrics_table=metrics_table,
    )
    return str(card)


__all__ = ["CARD_TAGS", "MODEL_INDEX_METRICS", "TEMPLATE", "render_model_card"]
