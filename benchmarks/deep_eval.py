#!/usr/bin/env python
"""The final evaluation of a run on a large, deep-class folder: embedding plus scoring, as ``Trainer.finish`` does it.

    python benchmarks/deep_eval.py           # 70,000 28-px images in 10 classes (7,000 each), smallcnn
    python benchmarks/deep_eval.py --quick   # 10,000 images (1,000 per class)

What ``Trainer.finish`` does at the end of training, timed part by part: the parts it
scores (``seen_test``: the folder default of 3 held-out images of each of the 5 seen
classes; ``unseen``: 5 classes, 35,000 images at full size) are each embedded
(``embed_part``: loader workers, large batches, channels-last on the CPU) and scored
(``score``: Recall@K, NMI, MAP@R with R = 6,999, R-Precision). The model is an untrained
smallcnn (128-d): speed does not depend on the weights. Also reported: the old embedding
path (no workers, batches of 256, the model in its own layout) on a slice, for images/s
before and after and the largest difference between their vectors, and
pytorch-metric-learning's P@1, MAP@R and R-Precision on the unseen split, which ecaml's
must equal to 1e-6. The folder is generated once (``common.image_folder``).
"""

from __future__ import annotations

import sys

from common import image_folder, pick, seconds, run_alone  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ecaml.config import TrainConfig  # noqa: E402
from ecaml.data.sampling import ImageView  # noqa: E402
from ecaml.eval.evaluate import embed_indices, embed_part, eval_transform, score, split_for  # noqa: E402
from ecaml.models import build_model  # noqa: E402

FINAL_PARTS = ("seen_test", "unseen")  # Trainer.final_parts for a folder run without validation classes
MATCHED = (("recall@1", "precision_at_1"), ("map@r", "mean_average_precision_at_r"), ("r_precision", "r_precision"))


def measure(scale: str = "full") -> dict:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    per_class = pick(scale, full=7000, quick=1000, tiny=40)
    generate_s, root = seconds(lambda: image_folder(classes=10, per_class=per_class, size=28))
    config = TrainConfig(dataset="folder", data_root=str(root), backbone="smallcnn", image_size=28,
                         embedding_dim=128).resolved()
    load_s, split = seconds(lambda: split_for(config))
    torch.manual_seed(0)
    model = build_model("smallcnn", 128, in_channels=3)
    device = torch.device("cpu")

    parts, embeddings = {}, {}
    for part in FINAL_PARTS:
        embed_s, embedded = seconds(lambda: embed_part(model, split, part, config, 3, device))
        score_s, metrics = seconds(lambda: score(embedded, config.recall_ks))
        embeddings[part] = embedded
        parts[part] = {"images": len(embedded.labels), "embed_s": embed_s, "score_s": score_s,
                       "images_per_s": len(embedded.labels) / embed_s, "metrics": metrics}
    total_s = sum(p["embed_s"] + p["score_s"] for p in parts.values())

    # The old embedding path on a slice: one process, batches of 256, the model's own layout. How much slower.
    sample = embeddings["unseen"].indices[: min(len(embeddings["unseen"].indices), 5000)]
    old_s, old_vectors = seconds(lambda: old_embedding(model, split, sample, config))
    same_batches = embed_indices(model, split, sample[:1024], config, 3, device, batch_size=256, num_workers=2)
    vectors_identical = bool(np.array_equal(same_batches.vectors, embeddings["unseen"].vectors[:1024]))
    vectors_close = float(np.abs(old_vectors - embeddings["unseen"].vectors[: len(sample)]).max())

    unseen = embeddings["unseen"]
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                    k="max_bin_count", device=torch.device("cpu"))
    pml_s, theirs = seconds(lambda: calculator.get_accuracy(torch.from_numpy(unseen.vectors),
                                                            torch.from_numpy(unseen.labels)))
    differences = {ours: abs(parts["unseen"]["metrics"][ours] - theirs[key]) for ours, key in MATCHED}
    return {
        "images": int(len(split.dataset)), "per_class": per_class, "image_size": 28, "embedding_dim": 128,
        "generate_folder_s": generate_s, "load_folder_s": load_s,
        "final_eval_s": total_s, "parts": parts,
        "old_embedding_images_per_s": len(sample) / old_s,
        "embedding_speedup": parts["unseen"]["images_per_s"] / (len(sample) / old_s),
        "vectors_identical_across_workers_and_batch_sizes": vectors_identical,
        "max_abs_vector_difference_from_the_old_path": vectors_close,
        "pml_unseen_s": pml_s, "pml_abs_differences": differences,
        "metrics_match_pml": all(d <= 1e-6 for d in differences.values()),
    }


def old_embedding(model, split, indices, config) -> np.ndarray:
    """Embedding as it was before workers and channels-last: one process, batches of 256, the model as it is."""
    loader = torch.utils.data.DataLoader(ImageView(split.dataset, indices, eval_transform(config, 3)), batch_size=256)
    model.eval()
    with torch.inference_mode():
        vectors = [torch.nn.functional.normalize(model(images), dim=1) for images, _, _ in loader]
    return torch.cat(vectors).numpy()


def summary(result: dict) -> list[tuple[str, str, str]]:
    unseen = result["parts"]["unseen"]
    return [
        ("deep eval: final evaluation", f"{result['final_eval_s']:.1f} s",
         f"{result['images']:,} images of 28 px, 10 classes: "
         + ", ".join(f"{name} ({part['images']:,})" for name, part in result["parts"].items()) + " embedded + scored"),
        ("deep eval: embedding", f"{unseen['images_per_s']:.0f} img/s",
         f"{result['embedding_speedup']:.1f}x the old path ({result['old_embedding_images_per_s']:.0f} img/s)"),
        ("deep eval: metrics, R deep", f"{unseen['score_s']:.1f} s",
         f"{unseen['images']:,} x 128, R = {result['per_class'] - 1:,}; pml {result['pml_unseen_s']:.1f} s, equal: "
         + ("yes" if result["metrics_match_pml"] else "NO")),
    ]


def main(argv=None) -> int:
    return run_alone(measure, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
