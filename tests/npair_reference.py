"""The authors' N-pair loss, ported line by line from ECAML's src/npair.cpp (with the layers around it in
examples/car/train_confusion.prototxt), in numpy and float64, independent of ecaml.losses.

The prototxt feeds NpairLoss with Normalization -> Scale (a fixed 10, lr_mult 0), and sets kcenter 1,
kcenter_n 128 (every other-class sample of its 65 x 2 batch), coeff 0.0005, k 1. ``npair_forward`` is
Forward_cpu: the loss and the ``diff_`` buffer that Backward_cpu hands down (``diff / num``), per sample.
``reference_loss_and_gradient`` runs the Scale and Normalization layers' backward to get d loss / d z.
"""

from __future__ import annotations

import numpy as np


def npair_forward(data: np.ndarray, label: np.ndarray, kcenter: int = 1, kcenter_n: int | None = None,
                  coeff: float = 5e-4, k: float = 1.0) -> tuple[float, np.ndarray]:
    """(top[0], bottom diff) of NpairLossLayer on ``data`` (the scaled embeddings); kcenter_n None: all negatives."""
    num, channels = data.shape
    diff = np.zeros_like(data)
    total = 0.0
    for i in range(num):
        center = np.zeros(channels)
        # same-class samples by Euclidean distance; partial_sort on (distance, index) pairs
        distance = sorted((float(np.sqrt(np.dot(data[i] - data[j], data[i] - data[j]))), j)
                          for j in range(num) if i != j and label[i] == label[j])
        loss = 0.0
        if len(distance) >= kcenter:
            for j in range(kcenter):
                center += data[distance[j][1]] / kcenter
            distance_n = sorted((float(np.sqrt(np.dot(data[j] - center, data[j] - center))), j)
                                for j in range(num) if label[i] != label[j])
            wanted = len(distance_n) if kcenter_n is None else kcenter_n
            if len(distance_n) >= wanted and wanted > 0:
                chosen = [j for _, j in distance_n[:wanted]]
                x_norm, center_norm = np.sqrt(data[i] @ data[i]), np.sqrt(center @ center)
                positive = (data[i] @ center) * (2 - k) + (1 - k) * x_norm * center_norm
                top = max([positive] + [data[j] @ center for j in chosen])
                positive = np.exp(positive - top)
                negatives = {j: np.exp(data[j] @ center - top) for j in chosen}
                denominator = positive + sum(negatives.values())
                loss = -np.log(max(positive / denominator, 1e-20)) + (data[i] @ data[i]) / 2 * coeff
                if loss >= 0:
                    centre_term = (1 - k) * center_norm / x_norm * data[i] + (2 - k) * center
                    diff[i] += (positive / denominator - 1) * centre_term
                    diff[i] += coeff * data[i]
                    anchor_term = data[i] * (2 - k) + (1 - k) * x_norm / center_norm * center
                    pulled = positive / denominator * anchor_term + sum(q / denominator * data[j] for j, q in negatives.items())
                    for j in range(kcenter):
                        diff[distance[j][1]] -= (anchor_term - pulled) / kcenter
                    for j, q in negatives.items():
                        diff[j] += q / denominator * center
        total += loss
    return total / num, diff / num


def reference_loss_and_gradient(z: np.ndarray, labels: np.ndarray, scale: float = 10.0,
                                coeff: float = 5e-4) -> tuple[float, np.ndarray]:
    """Loss and d loss / d z for raw embeddings z: Normalization, Scale (fixed), NpairLoss, and back."""
    z = z.astype(np.float64)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    unit = z / norm
    loss, diff_scaled = npair_forward(scale * unit, labels, coeff=coeff)
    diff_unit = scale * diff_scaled  # Scale layer backward
    # Normalization layer backward: (dy - y (dy . y)) / ||z||
    diff_z = (diff_unit - unit * np.sum(diff_unit * unit, axis=1, keepdims=True)) / norm
    return loss, diff_z
