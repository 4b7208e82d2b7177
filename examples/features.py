"""Image embeddings from an LMD encoder (no masking), for retrieval or a linear probe.

Embed image files, save the (N, D) array and print each image's nearest neighbour (cosine similarity):

    python examples/features.py --model path/to/lmd-checkpoint --images a.png b.png c.png --output features.npy

Linear probe on scikit-learn's digits (offline): logistic regression on frozen features, held-out accuracy:

    python examples/features.py --model path/to/lmd-checkpoint --digits_probe
"""

import argparse

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel

from modeling_lmd import LMDImageProcessor  # importing the package registers the Auto classes
from modeling_lmd.demo_data import digits_dataset
from modeling_lmd.pretrained import DEMO_LMD


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_LMD, help="LMD checkpoint folder or Hub id (default: the shipped one)")
    parser.add_argument("--images", nargs="*", default=[], help="image files to embed")
    parser.add_argument("--output", default="features.npy")
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--digits_probe", action="store_true", help="linear probe on scikit-learn's digits")
    parser.add_argument("--max_samples", type=int, default=None, help="digits: use only this many images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when present)")
    args = parser.parse_args(argv)
    if not args.images and not args.digits_probe:
        parser.error("give --images and/or --digits_probe")
    return args


def load(model_name, device="cpu"):
    model = AutoModel.from_pretrained(model_name).to(device).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(model_name)
    except (OSError, ValueError):  # a checkpoint saved without a processor
        processor = LMDImageProcessor.from_model_config(model.config)
    return model, processor


@torch.no_grad()
def embed(model, processor, images, pooling="mean", batch_size=64) -> np.ndarray:
    """Any images (paths, PIL, arrays) -> `(N, D)` float32 features."""
    features = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        features.append(model.get_image_features(pixel_values=pixel_values.to(model.device),
                                                 pooling=pooling).pooler_output)
    return torch.cat(features).float().cpu().numpy()


def nearest_neighbours(features: np.ndarray) -> list[tuple[int, float]]:
    normed = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    similarity = normed @ normed.T
    np.fill_diagonal(similarity, -np.inf)
    best = similarity.argmax(axis=1)
    return [(int(j), float(similarity[i, j])) for i, j in enumerate(best)]


def digits_probe(model, processor, args) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = digits_dataset()
    train, test = data["train"], data["test"]
    if args.max_samples:
        train = train.select(range(min(args.max_samples, len(train))))
        test = test.select(range(min(max(args.max_samples // 3, 10), len(test))))
    x_train = embed(model, processor, train["image"], args.pooling, args.batch_size)
    x_test = embed(model, processor, test["image"], args.pooling, args.batch_size)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(x_train, train["label"])
    accuracy = float(probe.score(x_test, test["label"]))
    print(f"linear probe on digits ({len(train)} train / {len(test)} test, {x_train.shape[1]}-d features): "
          f"accuracy {accuracy:.4f}")
    return accuracy


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, processor = load(args.model, args.device)
    results = {}
    if args.images:
        features = embed(model, processor, args.images, args.pooling, args.batch_size)
        np.save(args.output, features)
        print(f"wrote {args.output}: {features.shape[0]} x {features.shape[1]} ({args.pooling} pooling)")
        if len(args.images) > 1:
            for path, (j, similarity) in zip(args.images, nearest_neighbours(features)):
                print(f"{path} -> nearest: {args.images[j]} (cosine {similarity:.3f})")
        results["features"] = features
    if args.digits_probe:
        results["probe_accuracy"] = digits_probe(model, processor, args)
    return results


if __name__ == "__main__":
    main()
