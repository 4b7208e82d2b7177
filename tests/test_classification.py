"""LMDForImageClassification: loading from an LMD checkpoint, frozen VAE, loss, Trainer, pipelines, remote code."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline
from transformers.modeling_outputs import ImageClassifierOutput

from conftest import random_images
from modeling_lmd import LMDConfig, LMDForImageClassification, LMDImageProcessor, LMDModel
from subprocess_helpers import FLOAT_ATOL, run_without_package

HEAD_KEYS = {"fc_norm.weight", "fc_norm.bias", "classifier.weight", "classifier.bias"}


@pytest.fixture
def classifier(tiny_checkpoint):
    return LMDForImageClassification.from_pretrained(tiny_checkpoint, num_labels=3)


def test_loads_encoder_and_vae_and_only_the_head_is_new(tiny_model, tiny_checkpoint):
    model, info = LMDForImageClassification.from_pretrained(tiny_checkpoint, num_labels=3, output_loading_info=True)
    assert set(info["missing_keys"]) == HEAD_KEYS
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    source = tiny_model.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("lmd."):
            assert torch.equal(tensor, source[name]), name
    assert model.config.num_labels == 3 and model.classifier.out_features == 3


def test_features_match_the_lmd_model(tiny_model, classifier):
    images = random_images(2)
    features = tiny_model.lmd.get_image_features(pixel_values=images).pooler_output
    assert features.shape == (2, tiny_model.config.hidden_size)
    encoded = classifier.lmd(pixel_values=images).last_hidden_state
    assert torch.allclose(encoded[:, 1:].mean(1), features, atol=1e-6)
    assert tiny_model.lmd.get_image_features(pixel_values=images, pooling="cls").pooler_output.shape == (2, 32)
    with pytest.raises(ValueError, match="pooling"):
        tiny_model.lmd.get_image_features(pixel_values=images, pooling="max")


def test_forward_loss_and_frozen_vae(classifier):
    classifier.train()
    out = classifier(pixel_values=random_images(4), labels=torch.tensor([0, 1, 2, 0]))
    assert isinstance(out, ImageClassifierOutput) and out.logits.shape == (4, 3)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in classifier.lmd.vae.parameters())
    assert classifier.lmd.embeddings.patch_embeddings.weight.grad is not None
    assert not classifier.lmd.vae.training
    latents = classifier.lmd.encode_images(random_images(2))
    assert classifier(latents=latents).logits.shape == (2, 3)
    assert classifier(latents=latents, return_dict=False)[0].shape == (2, 3)


def test_cls_pooling_and_labels_in_config(tiny_checkpoint, tmp_path):
    labels = {0: "cat", 1: "dog"}
    model = LMDForImageClassification.from_pretrained(tiny_checkpoint, id2label=labels, classifier_pooling="cls")
    assert model.config.classifier_pooling == "cls" and model.config.num_labels == 2
    model.save_pretrained(tmp_path / "clf")
    saved = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert saved["id2label"] == {"0": "cat", "1": "dog"} and saved["classifier_pooling"] == "cls"
    assert saved["auto_map"]["AutoModelForImageClassification"] == "modeling_lmd.LMDForImageClassification"
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "clf")
    assert isinstance(reloaded, LMDForImageClassification) and reloaded.config.id2label[1] == "dog"


def test_trainer_fits_a_tiny_set(classifier, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    latents = torch.randn(12, 4, 8, 8)  # precomputed latents: the classifier skips the VAE
    labels = torch.arange(12) % 3
    dataset = Dataset.from_dict({"latents": latents.numpy(), "labels": labels.numpy()}).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=30, per_device_train_batch_size=12, learning_rate=3e-3,
        report_to="none", save_strategy="no", use_cpu=True, logging_steps=10, disable_tqdm=True,
    )
    processor = LMDImageProcessor.from_model_config(classifier.config)
    trainer = Trainer(model=classifier, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    with torch.no_grad():
        predictions = classifier(latents=latents).logits.argmax(-1)
    assert (predictions == labels).float().mean() > 0.9
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "preprocessor_config.json").is_file()


def test_image_classification_pipeline_in_process_and_remote(classifier, tmp_path):
    classifier.config.id2label = {0: "a", 1: "b", 2: "c"}
    classifier.config.label2id = {"a": 0, "b": 1, "c": 2}
    classifier.save_pretrained(tmp_path / "clf")
    LMDImageProcessor.from_model_config(classifier.config).save_pretrained(tmp_path / "clf")
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    classify = pipeline("image-classification", model=str(tmp_path / "clf"), trust_remote_code=False)
    expected = classify(image)
    assert {p["label"] for p in expected} == {"a", "b", "c"}
    assert abs(sum(p["score"] for p in expected) - 1) < 1e-4
    run_without_package(
        f"""
        import json
        from transformers import pipeline
        classify = pipeline("image-classification", model={str(tmp_path / "clf")!r}, trust_remote_code=True)
        assert type(classify.model).__module__.startswith("transformers_modules")
        json.dump(classify("image.png"), open("predictions.json", "w"))
        """,
        cwd=tmp_path,
    )
    remote = json.loads((tmp_path / "predictions.json").read_text())
    assert [p["label"] for p in remote] == [p["label"] for p in expected]
    assert np.allclose([p["score"] for p in remote], [p["score"] for p in expected], atol=FLOAT_ATOL)


def test_scratch_model_with_the_same_vae(tiny_checkpoint):
    pretrained = LMDModel.from_pretrained(tiny_checkpoint)
    config = LMDConfig.from_pretrained(tiny_checkpoint, num_labels=4)
    scratch = LMDForImageClassification(config)
    scratch.lmd.vae.load_state_dict(pretrained.vae.state_dict())
    assert not torch.equal(scratch.lmd.embeddings.patch_embeddings.weight, pretrained.embeddings.patch_embeddings.weight)
    assert scratch(pixel_values=random_images(1)).logits.shape == (1, 4)
