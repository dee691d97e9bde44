"""A 2-D layout that keeps neighbourhoods (exact t-SNE, in torch) and can start from a given layout.

The training film needs one map per recorded step, each showing that step's neighbourhoods, and consecutive maps
aligned so that what moves is the embedding. PCA (what the film used) keeps the directions of largest variance,
which on L2-normalised embeddings of many classes are not the ones that separate them: its last frame was a blob
while UMAP showed clean clusters. UMAP per frame re-compiles its layout optimiser on every fit (about 8 s a frame on
this project's two shared cores, 60 frames per pair); exact t-SNE on a film's at most 2,000 points is a few dense
matrix products per iteration, and starting each frame from the previous frame's layout keeps the frames aligned.
"""

from __future__ import annotations

import numpy as np
import torch

PERPLEXITY = 30.0
FIRST_ITERATIONS, NEXT_ITERATIONS = 250, 100  # a frame started from its neighbour needs far fewer steps
EXAGGERATION, EXAGGERATED_SHARE = 12.0, 0.25  # early exaggeration over the first quarter of a layout's steps
MOMENTUM = 0.8
NEIGHBOURS_PER_PERPLEXITY = 3  # the points each row of P keeps (van der Maaten 2014)


def affinities(vectors: np.ndarray, perplexity: float = PERPLEXITY) -> torch.Tensor:
    """t-SNE's symmetric joint probabilities P over the points, from cosine distances, each row's bandwidth found
    by bisection so that its conditional distribution has the given perplexity.

    Each row keeps its ``NEIGHBOURS_PER_PERPLEXITY * perplexity`` nearest points, as Barnes-Hut t-SNE, openTSNE and
    scikit-learn do: at this perplexity the rest hold a negligible share of the row, and the bisection over all N
    points was half of a 2,000-point frame's time (0.59 of 1.35 s on two cores).
    """
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(vectors), dtype=torch.float32), dim=1)
    count = len(x)
    distances = (2 - 2 * x @ x.T).clamp_min(0)
    distances.fill_diagonal_(float("inf"))
    kept = min(count - 1, int(NEIGHBOURS_PER_PERPLEXITY * perplexity))
    nearest, columns = torch.topk(distances, kept, dim=1, largest=False)  # ascending: nearest[:, 0] is the closest
    target = np.log(min(perplexity, (count - 1) / 3))
    shifted = nearest - nearest[:, :1]  # for stable exponentials
    low, high = torch.zeros(count, dtype=torch.float32), torch.full((count,), np.inf, dtype=torch.float32)
    beta = torch.ones(count, dtype=torch.float32)
    for _ in range(40):
        weights = torch.exp(-shifted * beta[:, None])
        total = weights.sum(dim=1)
        entropy = torch.log(total) + beta * (shifted * weights).sum(dim=1) / total
        too_wide = entropy > target  # a neighbourhood wider than the perplexity asks: narrow it (raise beta)
        low = torch.where(too_wide, beta, low)
        high = torch.where(too_wide, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2, (low + high) / 2)
    conditional = torch.zeros(count, count, dtype=torch.float32).scatter_(1, columns, weights / total[:, None])
    joint = (conditional + conditional.T) / (2 * count)
    return joint.clamp_min(1e-12)


def layout(vectors: np.ndarray, start: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """float32 [N, 2]: the t-SNE layout of ``vectors``; from ``start`` (a neighbouring frame's layout, N x 2) when
    given, else from a seeded small random layout, with more steps."""
    joint = affinities(vectors)
    count = len(joint)
    if start is None:
        generator = torch.Generator().manual_seed(seed)
        y = 1e-4 * torch.randn(count, 2, generator=generator, dtype=torch.float32)
        iterations = FIRST_ITERATIONS
    else:
        y = torch.as_tensor(np.asarray(start), dtype=torch.float32).clone()
        y = (y - y.mean(dim=0)) / max(float(y.std()), 1e-12) * 1e-2 * np.sqrt(count)  # a t-SNE-like scale
        iterations = NEXT_ITERATIONS
    rate, velocity = max(count / EXAGGERATION / 4, 50.0), torch.zeros_like(y)
    for iteration in range(iterations):
        exaggeration = EXAGGERATION if iteration < EXAGGERATED_SHARE * iterations else 1.0
        forces = _forces(y, joint, exaggeration)
        # sum_j forces_ij (y_i - y_j), as two matrix products rather than an N x N x 2 tensor
        gradient = 4 * (forces.sum(dim=1, keepdim=True) * y - forces @ y)
        velocity = MOMENTUM * velocity - rate * gradient
        y = y + velocity
    y = y - y.mean(dim=0)
    return y.numpy().astype(np.float32)


def _forces(y: torch.Tensor, joint: torch.Tensor, exaggeration: float) -> torch.Tensor:
    """(exaggeration * P - Q) * (1 + |y_i - y_j|^2)^-1, the N x N weights of t-SNE's gradient. Written in place on
    one N x N buffer (fused squared distances, no temporaries): each iteration is a few passes over N^2 floats, so
    memory traffic is its cost, and this halves it (2,000 points: 7 against 14-18 ms an iteration)."""
    squared = (y * y).sum(dim=1)
    kernel = torch.addmm(squared[:, None] + squared[None, :], y, y.T, alpha=-2)
    kernel.clamp_min_(0).add_(1).reciprocal_()
    kernel.fill_diagonal_(0)
    forces = torch.mul(kernel, -1 / float(kernel.sum()))
    return forces.add_(joint, alpha=exaggeration).mul_(kernel)
