"""Does LMD pre-training help a classifier? The standard self-supervised setting, in domain and with few labels.

scikit-learn's handwritten digits (1797 8x8 scans, 10 classes; 1347 training / 450 held-out, stratified, seeded),
upsampled to the demo VAE's 64 px. Pre-training uses the training scans without their labels (the held-out scans
are never seen before the final score):

- **LMD**: `lmd-small` on the shipped demo VAE, cached latents, the cosine mask schedule, `--pretrain_steps` at
  batch 64 (the main job's learning rate);
- **pixel MAE**: transformers' `ViTMAEForPreTraining` with the same widths and patch grid (64 px, patch 8),
  MAE's constant 0.75, pre-trained for the same wall-clock as LMD (its latent caching included);
- **from scratch**: the same LMD encoder, randomly initialised, on the same frozen VAE.

Then each encoder is scored with 10 % and 100 % of the training labels: a linear probe (logistic regression on its
frozen mean-pooled features) and fine-tuning (encoder + a LayerNorm-linear head on the mean-pooled tokens, the
same steps, batch and learning rate for every arm, no augmentation). Held-out accuracy, mean ± std over seeds.

    python benchmarks/digits_ssl.py --seeds 0 1 2 --output_dir runs/benchmarks
    python benchmarks/digits_ssl.py --quick --output_dir runs/benchmarks
"""

import copy
import os
import time

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTMAEForPreTraining, ViTMAEModel

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForImageClassification, LMDForPreTraining, LMDImageProcessor, LMDModel
from modeling_lmd.data import collate_fn
from modeling_lmd.demo_data import digits_dataset
from modeling_lmd.pretrained import DEMO_VAE
from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments
from pixel_mae import pixel_mae_config
from runs import QUICK_WIDTHS, seconds_per_step


ARMS = ("LMD pre-trained", "pixel MAE pre-trained", "LMD encoder from scratch")
PROTOCOLS = tuple(f"{kind}, {fraction:.0%} labels" for kind in ("linear probe", "fine-tuned") for fraction in (0.1, 1.0))


def digits(seed: int, quick: bool):
    """Pixels `(N, 3, 64, 64)` in [-1, 1] and labels of the training and held-out scans."""
    data = digits_dataset(seed=seed)
    processor = LMDImageProcessor(size={"height": 64, "width": 64})
    splits = []
    for name, count in (("train", 48), ("test", 32)):
        split = data[name].select(range(count)) if quick else data[name]
        splits.append((processor(list(split["image"]), return_tensors="pt")["pixel_values"],
                       torch.tensor(split["label"])))
    return splits


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a stratified `fraction` of the training labels (at least one per class), seeded."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        picks.append(members[: max(1, round(fraction * len(members)))])
    return torch.cat(picks).sort().values


class PooledClassifier(nn.Module):
    """A ViTMAE encoder with LMDForImageClassification's head (mean over patch tokens, LayerNorm, linear), so the
    pixel arm is fine-tuned exactly as the latent ones; no masking at classification time."""

    def __init__(self, encoder: ViTMAEModel, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.encoder.config.mask_ratio = 0.0  # every patch (in a shuffled order, which mean pooling ignores)
        self.fc_norm = nn.LayerNorm(encoder.config.hidden_size, eps=encoder.config.layer_norm_eps)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values).last_hidden_state[:, 1:].mean(dim=1)

    def forward(self, pixel_values, labels=None):
        logits = self.classifier(self.fc_norm(self.features(pixel_values)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class StopAfter(TrainerCallback):
    """Stops training once `seconds` of wall-clock have passed since it began: pixel MAE gets LMD's time."""

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = time.perf_counter() - self.started >= self.seconds


def pretrain_lmd(args, seed: int, pixels: torch.Tensor, steps: int) -> tuple[str, str, float]:
    """LMD pre-trained on the training scans (no labels) and the same model before it: their folders, and the
    wall-clock spent (latent encoding included)."""
    torch.manual_seed(seed)
    widths = QUICK_WIDTHS if args.quick else {}
    model = LMDForPreTraining.from_vae(DEMO_VAE, preset="lmd-small", **widths).to(args.device)
    folder = os.path.join(args.output_dir, f"digits-ssl-seed{seed}")
    model.save_pretrained(os.path.join(folder, "lmd-scratch"))
    started = time.perf_counter()
    latents = in_chunks(model.lmd.encode_images, pixels, args.device)  # no augmentation: every image encoded once
    trainer = LMDTrainer(model=model, data_collator=collate_fn,
                         train_dataset=Dataset.from_dict({"latents": latents.numpy()}).with_format("torch"),
                         args=LMDTrainingArguments(**quiet(args, folder, seed), max_steps=steps,
                                                   per_device_train_batch_size=8 if args.quick else 64,
                                                   learning_rate=6e-3 * 64 / 256, warmup_steps=0.05))
    trainer.train()
    seconds = time.perf_counter() - started
    model.save_pretrained(os.path.join(folder, "lmd-pretrained"))
    return os.path.join(folder, "lmd-pretrained"), os.path.join(folder, "lmd-scratch"), seconds


def pretrain_pixel_mae(args, seed: int, pixels: torch.Tensor, seconds: float) -> tuple[ViTMAEModel, int]:
    """Pixel MAE's encoder after `seconds` of training on the same scans, and its step count. Its cosine learning
    rate is planned over the steps that fit, from a few timed steps; the clock stops it if they take longer."""
    lmd = LMDConfig.from_preset("lmd-small", **(QUICK_WIDTHS if args.quick else {}))
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(pixel_mae_config(lmd)).to(args.device)  # MAE's constant 0.75 (mask_ratio_end)
    data = Dataset.from_dict({"pixel_values": pixels.numpy()}).with_format("torch")
    batch = 8 if args.quick else 64
    per_step = seconds_per_step(Trainer(model=model, train_dataset=data, args=LMDTrainingArguments(
        **quiet(args, os.path.join(args.output_dir, "pixel-mae-timing"), seed), max_steps=8,
        per_device_train_batch_size=batch)), 8)
    planned = max(5, int(seconds / per_step))
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(pixel_mae_config(lmd)).to(args.device)  # afresh: the timing steps are not kept
    trainer = Trainer(model=model, train_dataset=data, callbacks=[StopAfter(seconds)], args=LMDTrainingArguments(
        **quiet(args, os.path.join(args.output_dir, "pixel-mae"), seed), max_steps=planned,
        per_device_train_batch_size=batch, learning_rate=6e-3 * 64 / 256, warmup_steps=0.05))
    trainer.train()
    return model.vit, trainer.state.global_step


def pretrain_steps(args) -> int:
    return 4 if args.quick else args.pretrain_steps


def fine_tune_steps(args) -> int:
    return 2 if args.quick else args.steps


def quiet(args, output_dir: str, seed: int) -> dict:
    return {"output_dir": output_dir, "save_strategy": "no", "report_to": "none", "seed": seed, "disable_tqdm": True,
            "logging_steps": 10**9, "dataloader_pin_memory": False, "use_cpu": args.device == "cpu"}


@torch.no_grad()
def in_chunks(function, inputs: torch.Tensor, device) -> torch.Tensor:
    """`function` over `inputs` 256 rows at a time on `device`, gathered on the CPU."""
    return torch.cat([function(chunk.to(device)).cpu() for chunk in inputs.split(256)])


def features(encode, pixels: torch.Tensor, device) -> np.ndarray:
    return in_chunks(encode, pixels, device).float().numpy()


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float(probe.fit(train_x, train_y).score(test_x, test_y))


def fine_tune(args, model, inputs: str, train_x, train_y, test_x, test_y, seed: int) -> float:
    """Encoder and head trained on the labelled images for the same steps in every arm; held-out accuracy."""
    train = Dataset.from_dict({inputs: train_x.numpy(), "labels": train_y.numpy()}).with_format("torch")
    Trainer(model=model, train_dataset=train, args=TrainingArguments(
        **quiet(args, os.path.join(args.output_dir, "fine-tune"), seed), max_steps=fine_tune_steps(args),
        per_device_train_batch_size=8 if args.quick else 64, learning_rate=1e-3, weight_decay=0.05,
        lr_scheduler_type="cosine", warmup_steps=0.1)).train()
    model.eval()
    logits = in_chunks(lambda chunk: model(**{inputs: chunk})["logits"], test_x, args.device)
    return float((logits.argmax(-1) == test_y).float().mean())


def evaluate_seed(args, seed: int) -> dict:
    (train_pixels, train_y), (test_pixels, test_y) = digits(seed, args.quick)
    pretrained, scratch, seconds = pretrain_lmd(args, seed, train_pixels, pretrain_steps(args))
    mae_encoder, mae_steps = pretrain_pixel_mae(args, seed, train_pixels, seconds)
    scores = {"pretrain_seconds": seconds, "pixel_mae_steps": mae_steps, "held_out_scans": len(test_y)}
    vae = LMDModel.from_pretrained(scratch).to(args.device).eval()  # both LMD arms carry this same frozen VAE
    train_latents, test_latents = (in_chunks(vae.encode_images, pixels, args.device)
                                   for pixels in (train_pixels, test_pixels))
    for fraction in (0.1, 1.0):
        picks = label_subset(train_y, fraction, seed)
        for arm, source in (("LMD pre-trained", pretrained), ("LMD encoder from scratch", scratch)):
            encoder = LMDModel.from_pretrained(source).to(args.device).eval()
            encode = lambda latents, model=encoder: model.get_image_features(latents=latents).pooler_output  # noqa: E731
            scores[(arm, f"linear probe, {fraction:.0%} labels")] = linear_probe(
                features(encode, train_latents[picks], args.device), train_y[picks],
                features(encode, test_latents, args.device), test_y)
            classifier = LMDForImageClassification.from_pretrained(source, num_labels=10).to(args.device)
            scores[(arm, f"fine-tuned, {fraction:.0%} labels")] = fine_tune(
                args, classifier, "latents", train_latents[picks], train_y[picks], test_latents, test_y, seed)
        mae = PooledClassifier(mae_encoder, 10).to(args.device).eval()
        scores[("pixel MAE pre-trained", f"linear probe, {fraction:.0%} labels")] = linear_probe(
            features(mae.features, train_pixels[picks], args.device), train_y[picks],
            features(mae.features, test_pixels, args.device), test_y)
        tuned = PooledClassifier(copy.deepcopy(mae_encoder), 10).to(args.device)
        scores[("pixel MAE pre-trained", f"fine-tuned, {fraction:.0%} labels")] = fine_tune(
            args, tuned, "pixel_values", train_pixels[picks], train_y[picks], test_pixels, test_y, seed)
    return scores


def main(argv=None) -> dict:
    cli = parser(__doc__)
    cli.add_argument("--pretrain_steps", type=int, default=600, help="LMD pre-training steps (the main job's)")
    cli.add_argument("--steps", type=int, default=150, help="fine-tuning steps, every arm")
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = cli.parse_args(argv)
    setup(args)
    seeds = args.seeds[:1] if args.quick else args.seeds
    per_seed = [evaluate_seed(args, seed) for seed in seeds]
    rows = []
    for arm in ARMS:
        cells = []
        for protocol in PROTOCOLS:
            values = np.array([scores[(arm, protocol)] for scores in per_seed])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        rows.append([arm, *cells])
    markdown = table([f"held-out accuracy ({per_seed[0]['held_out_scans']} scans)", *PROTOCOLS], rows)
    seconds = [scores["pretrain_seconds"] for scores in per_seed]
    markdown += (f"\nSeeds {seeds}; LMD pre-training {pretrain_steps(args)} steps ({np.mean(seconds):.0f} s, latent "
                 f"encoding included), pixel MAE for the same wall-clock ("
                 f"{np.mean([scores['pixel_mae_steps'] for scores in per_seed]):.0f} steps); fine-tuning {fine_tune_steps(args)} steps.\n")
    results = {"per_seed": [{" / ".join(k) if isinstance(k, tuple) else k: v for k, v in s.items()} for s in per_seed],
               "table": rows}
    write_results(args, "digits_ssl", results, markdown)
    plot(per_seed, os.path.join(args.output_dir, "digits_ssl.png"))
    return results


def plot(per_seed: list[dict], path: str) -> None:
    """Grouped bars: held-out accuracy per protocol and arm, mean over seeds, the spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(ARMS)
    for offset, (arm, colour) in enumerate(zip(ARMS, ("tab:blue", "tab:orange", "tab:gray"))):
        values = np.array([[scores[(arm, protocol)] for protocol in PROTOCOLS] for scores in per_seed])
        positions = np.arange(len(PROTOCOLS)) + (offset - 1) * width
        axis.bar(positions, values.mean(0), width, yerr=values.std(0), capsize=3, color=colour, label=arm)
    axis.set_xticks(np.arange(len(PROTOCOLS)), PROTOCOLS)
    axis.set(ylabel="held-out accuracy", ylim=(0, 1.15), yticks=np.linspace(0, 1, 6),
             title=f"Digits, in domain: does pre-training help? (mean ± std over {len(per_seed)} seeds)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper center", ncol=len(ARMS))  # above the bars: accuracy stops at 1
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
