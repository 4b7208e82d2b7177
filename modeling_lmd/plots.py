"""`training_curves.png`: what a run did, drawn from the Trainer's log history.

Four panels against the optimizer step: the training loss, the mask ratio the schedule set, the learning rate, and
the held-out hidden-region PSNR of every evaluation with its references (the mean-colour fill, classical
inpainting and the VAE alone) as horizontal lines. Needs matplotlib (the `demo` and `test` extras).
"""

from __future__ import annotations


def save_training_curves(log_history: list[dict], path: str, title: str = "") -> bool:
    """Draw the curves into `path` (PNG); returns False, drawing nothing, if the history holds no training logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [entry for entry in log_history if "loss" in entry and "step" in entry]
    evals = [entry for entry in log_history if "eval_masked_psnr" in entry]
    if not train:
        return False
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    steps = [entry["step"] for entry in train]
    for axis, key, label in ((axes[0], "loss", "training loss (latent MSE)"),
                             (axes[1], "mask_ratio", "mask ratio (schedule)"),
                             (axes[2], "learning_rate", "learning rate")):
        axis.plot(steps, [entry.get(key, float("nan")) for entry in train], marker=".", color="tab:blue")
        axis.set(xlabel="optimizer step", title=label)
        axis.grid(alpha=0.3)
    axis = axes[3]
    if evals:
        eval_steps = [entry["step"] for entry in evals]
        axis.plot(eval_steps, [e["eval_masked_psnr"] for e in evals], marker="o", color="tab:blue",
                  label="LMD (leak-free)")
        references = (("eval_pixel_mean_fill_psnr", "mean-colour fill", "gray", "--"),
                      ("eval_biharmonic_psnr", "biharmonic inpainting", "tab:orange", "-."),
                      ("eval_telea_psnr", "Telea inpainting", "tab:green", "-."),
                      ("eval_vae_psnr", "VAE alone (ceiling)", "black", ":"))
        for key, label, colour, style in references:
            if evals[-1].get(key, float("nan")) == evals[-1].get(key, float("nan")):  # present, not NaN
                axis.axhline(evals[-1][key], color=colour, linestyle=style, label=label)
        ratio = evals[-1].get("eval_mask_ratio")
        axis.legend(fontsize=8)
        axis.set(title="held-out PSNR, hidden region" + (f", ratio {ratio:g}" if ratio else "") + " (dB)")
    else:
        axis.set(title="held-out PSNR: no evaluation during training")
    axis.set(xlabel="optimizer step")
    axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


__all__ = ["save_training_curves"]
