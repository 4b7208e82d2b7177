"""LMDTrainer: mask-ratio schedule per optimizer step, exact resume, frozen VAE, optimizer groups, evaluation."""

import glob
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from modeling_lmd import MASK_SCHEDULES, LMDConfig, LMDForPreTraining, LMDImageProcessor, mask_ratio_at
from modeling_lmd.data import ImageDataset, ProcessorTransform, RandomResizedCropFlip, collate_fn
from modeling_lmd.metrics import METRIC_NAMES, latent_mean_fill, mask_noise, psnr
from modeling_lmd.modeling_lmd import num_visible_patches, paint_hidden_pixels
from modeling_lmd.trainer import LMDTrainer, LMDTrainingArguments


def image_dataset(count: int = 6, size: int = 40, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray((rng.random((size, size + 8, 3)) * 255).astype(np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


def make_model(schedule: str = "uniform") -> LMDForPreTraining:
    torch.manual_seed(0)
    return LMDForPreTraining(LMDConfig.from_preset("lmd-tiny", mask_schedule=schedule))


EVAL_TRANSFORM = ProcessorTransform(LMDImageProcessor(size={"height": 32, "width": 32}))


def make_args(tmp_path, **overrides) -> LMDTrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        learning_rate=1e-3,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    kwargs.update(overrides)
    return LMDTrainingArguments(**kwargs)


def train_logs(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("schedule", MASK_SCHEDULES)
def test_logged_mask_ratio_follows_the_schedule(tmp_path, schedule, accumulation):
    max_steps = 12
    model = make_model(schedule)
    seen = []  # (global_step, visible patches) of every forward
    trainer = LMDTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=max_steps, gradient_accumulation_steps=accumulation),
        train_dataset=ImageDataset(image_dataset(8), "image", RandomResizedCropFlip(32)),
        data_collator=collate_fn,
    )
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append((trainer.state.global_step, kwargs["num_visible"]))
        return forward(*args, **kwargs)

    model.forward = spy
    trainer.train()

    logs = train_logs(trainer)
    assert [entry["step"] for entry in logs] == list(range(1, max_steps + 1))
    for entry in logs:
        expected = mask_ratio_at(schedule, entry["step"] - 1, max_steps, 0.15, 0.75)
        assert entry["mask_ratio"] == pytest.approx(expected, abs=1e-12), entry
    # Every micro-batch of optimizer step t trained at mask_ratio_at(t), given to the model as a count (an int).
    assert len(seen) == max_steps * accumulation
    for step, visible in seen:
        assert visible == num_visible_patches(mask_ratio_at(schedule, step, max_steps), 16) and type(visible) is int
    assert model.config.mask_ratio == 0.75  # the evaluation ratio is never overwritten


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, accumulation):
    max_steps, save_at = 8, 4  # 6 images / batch 2: the checkpoint falls inside an epoch
    dataset = image_dataset()

    def run(output_dir, resume=None, save=False):
        trainer = LMDTrainer(
            model=make_model("cosine"),
            args=make_args(
                tmp_path / output_dir, max_steps=max_steps, gradient_accumulation_steps=accumulation,
                per_device_train_batch_size=3 - accumulation,
                save_strategy="steps" if save else "no", save_steps=save_at,
            ),
            train_dataset=ImageDataset(dataset, "image", RandomResizedCropFlip(32), seed=0),
            data_collator=collate_fn,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full", save=True)
    checkpoint = glob.glob(str(tmp_path / "full" / "out" / f"checkpoint-{save_at}"))[0]
    resumed = run("resumed", resume=checkpoint)

    full_logs = {entry["step"]: entry for entry in train_logs(full)}
    # The resumed state carries the checkpoint's history (steps 1..save_at), then logs its own steps.
    resumed_logs = {entry["step"]: entry for entry in train_logs(resumed) if entry["step"] > save_at}
    assert sorted(resumed_logs) == list(range(save_at + 1, max_steps + 1))
    for step, entry in resumed_logs.items():
        assert entry["mask_ratio"] == pytest.approx(full_logs[step]["mask_ratio"], abs=1e-12)
        assert entry["mask_ratio"] == pytest.approx(mask_ratio_at("cosine", step - 1, max_steps), abs=1e-12)
        assert entry["loss"] == pytest.approx(full_logs[step]["loss"], abs=1e-4)
    assert resumed_logs[max_steps]["loss"] == pytest.approx(full_logs[max_steps]["loss"], abs=1e-4)


def test_vae_stays_frozen_and_gets_no_optimizer_state(tmp_path):
    model = make_model()
    vae_before = {k: v.clone() for k, v in model.lmd.vae.state_dict().items()}
    trainer = LMDTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=3, learning_rate=1e-2),
        train_dataset=ImageDataset(image_dataset(), "image", RandomResizedCropFlip(32)),
        data_collator=collate_fn,
    )
    trainer.train()
    trainer.save_model()

    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, tensor in vae_before.items():
        assert torch.equal(saved[f"lmd.vae.{name}"], tensor), name

    names = {id(p): n for n, p in model.named_parameters()}
    optimized = [names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimized and not any(n.startswith("lmd.vae.") for n in optimized)
    assert sorted(optimized) == sorted(n for n, p in model.named_parameters() if not n.startswith("lmd.vae."))
    with_state = [names[id(p)] for p in trainer.optimizer.state]
    assert with_state and not any(n.startswith("lmd.vae.") for n in with_state)

    decay = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "lmd.embeddings.cls_token" in no_decay and "decoder.mask_token" in no_decay
    assert all(not n.endswith("bias") and "norm" not in n for n in decay)
    assert "lmd.embeddings.patch_embeddings.weight" in decay and "decoder.decoder_pred.weight" in decay
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def test_base_learning_rate_scales_with_total_batch(tmp_path):
    args = make_args(tmp_path, base_learning_rate=1.5e-4, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    trainer = LMDTrainer(model=make_model(), args=args, data_collator=collate_fn)
    assert trainer.args.learning_rate == pytest.approx(1.5e-4 * 8 / 256)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.9, 0.95, 0.05)


def test_evaluation_runs_through_the_trainer_loop_with_per_sample_masks(tmp_path):
    model = make_model()
    model.config.mask_ratio = 0.5
    eval_set = ImageDataset(image_dataset(5, seed=1), "image", EVAL_TRANSFORM, seed=3, evaluation=True)
    seen = []

    class Spy(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append(metrics)

    def evaluate(batch_size):
        trainer = LMDTrainer(
            model=model, args=make_args(tmp_path, max_steps=2, per_device_eval_batch_size=batch_size),
            train_dataset=ImageDataset(image_dataset(), "image", RandomResizedCropFlip(32)),
            eval_dataset=eval_set, data_collator=collate_fn, callbacks=[Spy()],
        )
        return trainer, trainer.evaluate()

    trainer, first = evaluate(batch_size=3)
    _, second = evaluate(batch_size=2)
    assert len(seen) == 2 and seen[0]["eval_loss"] == first["eval_loss"]  # callbacks see the Trainer's metrics
    for name in METRIC_NAMES:  # masks depend on the sample, not on how the samples are batched
        assert math.isfinite(first[f"eval_{name}"]) and first[f"eval_{name}"] == pytest.approx(
            second[f"eval_{name}"], abs=1e-5), name
    assert first["eval_mask_ratio"] == 0.5

    # eval_loss is the mean per-image loss at config.mask_ratio under each image's own seeded mask.
    batch = collate_fn([eval_set[i] for i in range(5)])
    noise = mask_noise(batch["mask_seed"], 16, "cpu")
    with torch.no_grad():
        per_image = [model(pixel_values=batch["pixel_values"][i : i + 1], num_visible=8, noise=noise[i : i + 1]).loss
                     for i in range(5)]
    assert first["eval_loss"] == pytest.approx(float(torch.stack(per_image).mean()), abs=1e-6)
    # The references beside the model: the VAE alone beats the mean-colour fill on real pixels.
    assert first["eval_vae_psnr"] > first["eval_pixel_mean_fill_psnr"] - 10
    trainer.train()
    assert model.config.mask_ratio == 0.5


def test_mask_ratio_reaches_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = LMDTrainer(
        model=make_model("uniform"),
        args=make_args(tmp_path, max_steps=3, report_to="tensorboard"),
        train_dataset=ImageDataset(image_dataset(), "image", RandomResizedCropFlip(32)),
        data_collator=collate_fn,
    )
    trainer.train()
    # transformers 5 writes TensorBoard events under <output_dir>/runs/<date_host>/.
    files = glob.glob(str(tmp_path / "out" / "runs" / "**" / "events.out.tfevents.*"), recursive=True)
    assert files
    accumulator = EventAccumulator(files[0]).Reload()
    events = accumulator.Scalars("train/mask_ratio")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([mask_ratio_at("uniform", k, 3) for k in range(3)], abs=1e-6)


def test_psnr_and_the_baselines_on_hand_made_examples():
    pixels = torch.zeros(2, 3, 8, 8)
    reconstruction = torch.full_like(pixels, 0.2)  # [0, 1] error 0.1 -> MSE 0.01 -> 20 dB
    pixel_mask = torch.zeros(2, 1, 8, 8)
    pixel_mask[:, :, :4] = 1
    reconstruction[:, :, 4:] = 1.0  # outside the mask: must not count
    assert psnr(reconstruction, pixels, pixel_mask) == pytest.approx(torch.tensor([20.0, 20.0]), abs=1e-4)
    assert torch.isnan(psnr(reconstruction, pixels, torch.zeros_like(pixel_mask))).all()  # nothing to score

    # Pixel mean fill: the left half is red (1, -1, -1), the right half blue; the top-right quarter is hidden.
    image = torch.full((1, 3, 4, 4), -1.0)
    image[:, 0, :, :2] = 1.0
    image[:, 2, :, 2:] = 1.0
    hidden = torch.zeros(1, 1, 4, 4)
    hidden[:, :, :2, 2:] = 1
    filled = paint_hidden_pixels(image, hidden)
    # 8 red and 4 blue visible pixels: mean colour (8 - 4) / 12 red, -1 green, (4 - 8) / 12 blue.
    expected = torch.tensor([4 / 12, -1.0, -4 / 12])
    assert torch.allclose(filled[0, :, :2, 2:].permute(1, 2, 0), expected.expand(2, 2, 3))
    assert torch.equal(filled * (1 - hidden), image * (1 - hidden))  # visible pixels untouched

    model = make_model()
    latents = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, model.config.num_patches)
    mask[:, :5] = 1
    filled = latent_mean_fill(model, latents, mask)
    patches, filled_patches = model.patchify(latents), model.patchify(filled)
    visible = mask[0] == 0
    assert torch.equal(filled_patches[:, visible], patches[:, visible])
    channel_means = patches[:, visible].reshape(2, -1, 4).mean(dim=1)  # (B, C)
    hidden_patches = filled_patches[:, ~visible].reshape(2, -1, 4)
    assert torch.allclose(hidden_patches, channel_means[:, None, :].expand_as(hidden_patches), atol=1e-6)


def test_a_whole_cosine_schedule_compiles_to_at_most_two_graphs_with_eager_losses(tmp_path):
    """torch.compile over a schedule whose ratio changes every step: the Trainer gives the model the visible count as
    an int, which dynamo marks dynamic on its first change, so the graphs stay at COMPILED_GRAPHS_BOUND however many
    counts the schedule takes (a float ratio would compile one graph per value). Counted with dynamo's own
    counters and its `eager` backend; the losses are the uncompiled run's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from modeling_lmd.trainer import COMPILED_GRAPHS_BOUND

    def run(**compile_args):
        torch._dynamo.reset()
        counters.clear()
        trainer = LMDTrainer(model=make_model("cosine"), args=make_args(tmp_path, max_steps=24, **compile_args),
                             train_dataset=ImageDataset(image_dataset(8), "image", RandomResizedCropFlip(32)),
                             data_collator=collate_fn)
        trainer.train()
        return [entry["loss"] for entry in train_logs(trainer)], counters["stats"]["unique_graphs"]

    eager_losses, _ = run()
    compiled_losses, graphs = run(torch_compile=True, torch_compile_backend="eager")
    visible = {num_visible_patches(mask_ratio_at("cosine", step, 24), 16) for step in range(24)}
    assert len(visible) >= 8 and 1 <= graphs <= COMPILED_GRAPHS_BOUND == 2
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)


def test_total_flos_is_the_vits_flop_count_of_every_step(tmp_path):
    from modeling_lmd.trainer import training_step_flops

    trainer = LMDTrainer(model=make_model("cosine"), args=make_args(tmp_path, max_steps=6),
                         train_dataset=ImageDataset(image_dataset(8), "image", RandomResizedCropFlip(32)),
                         data_collator=collate_fn)
    trainer.train()
    config = trainer.model.config
    expected = sum(training_step_flops(config, 2, num_visible_patches(mask_ratio_at("cosine", step, 6), 16))
                   for step in range(6))
    assert trainer.state.total_flos == expected


@pytest.mark.parametrize("overrides", [{}, {"decoder_num_hidden_layers": 0}, {"patch_size": 1},
                                       {"harmonic_fill": True}])
def test_training_step_flops_are_what_torch_counts(overrides):
    """The formula against torch's FLOP counter on a real forward and backward (eager attention: the counter does
    not see every fused attention kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_lmd.trainer import training_step_flops

    torch.manual_seed(0)
    config = LMDConfig.from_preset("lmd-tiny", **overrides)
    config._attn_implementation = "eager"
    model = LMDForPreTraining(config).train()
    for visible in (1, config.num_patches // 2, config.num_patches - 1):
        latents = torch.randn(3, config.latent_channels, config.latent_size, config.latent_size)
        with FlopCounterMode(display=False) as counter:
            model(latents=latents, noise=torch.rand(3, config.num_patches), num_visible=visible).loss.backward()
        assert counter.get_total_flops() == training_step_flops(config, 3, visible)


def test_the_step_defaults_ask_the_host_for_nothing(tmp_path):
    """No per-step NaN test of the loss on the host, and batches from pinned memory copied without waiting."""
    args = LMDTrainingArguments(output_dir=str(tmp_path), report_to="none")
    trainer = LMDTrainer(model=make_model(), args=args, train_dataset=image_dataset(2))
    assert args.logging_nan_inf_filter is False
    assert args.dataloader_pin_memory is True
    assert trainer.accelerator.dataloader_config.non_blocking is True
    unpinned = LMDTrainingArguments(output_dir=str(tmp_path), report_to="none", dataloader_pin_memory=False)
    assert unpinned.accelerator_config.non_blocking is False  # nothing to gain, and Accelerate would warn


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: it checks that a CUDA step never waits")
def test_a_training_step_never_synchronises_with_the_host_on_a_gpu(tmp_path):
    """After the first batches, whose values are checked on purpose, a step (forward, backward, optimizer) runs
    under `torch.cuda.set_sync_debug_mode("error")`: any host synchronisation raises."""
    from modeling_lmd.trainer import CHECKED_TRAINING_BATCHES

    trainer = LMDTrainer(model=make_model("cosine"), args=make_args(tmp_path, max_steps=10),
                         train_dataset=ImageDataset(image_dataset(8), "image", RandomResizedCropFlip(32)),
                         data_collator=collate_fn)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    batch = trainer._prepare_inputs(collate_fn([trainer.train_dataset[i] for i in range(4)]))
    for _ in range(CHECKED_TRAINING_BATCHES):
        trainer.training_step(trainer.model, batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
