"""The Chosen One's clustering step (Algorithm 1): k-means++, small clusters dropped, the most cohesive kept.

Pure functions over an (N, d) embedding matrix. Distances are Euclidean, as in the public implementation
(cohesion = mean unsquared distance of a cluster's members to its centroid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def mean_pairwise_distance(emb: np.ndarray) -> float:
    """Mean Euclidean distance over the N (N - 1) ordered pairs i != j (the diagonal's zeros are left out)."""
    n = len(emb)
    if n < 2:
        return 0.0
    sq = (emb ** 2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * emb @ emb.T, 0.0))
    return float(d.sum() / (n * (n - 1)))


@dataclass
class Clustering:
    k: int
    labels: list[int]            # cluster of each image
    sizes: list[int]             # members per cluster
    cohesion: list[float]        # mean distance of each cluster's members to its centroid
    kept: list[int]              # clusters with more than min_cluster members
    chosen: int                  # the most cohesive kept cluster
    fallback: bool               # True: no cluster had more than min_cluster members, the most cohesive of all

    @property
    def members(self) -> list[int]:
        return [i for i, c in enumerate(self.labels) if c == self.chosen]

    def to_dict(self) -> dict:
        return {**asdict(self), "members": self.members}


def choose_cluster(emb: np.ndarray, *, cluster_size: int, min_cluster: int, seed: int) -> Clustering:
    """k = N // cluster_size clusters by scikit-learn's k-means++ (seeded, 10 restarts); keep clusters with more
    than ``min_cluster`` members; pick the one with the smallest mean distance to its centroid."""
    from sklearn.cluster import KMeans

    k = max(1, len(emb) // cluster_size)
    km = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=seed).fit(emb)
    labels = km.labels_.astype(int)
    sizes = [int((labels == c).sum()) for c in range(k)]
    cohesion = [float(np.linalg.norm(emb[labels == c] - km.cluster_centers_[c], axis=1).mean()) if sizes[c] else
                float("inf") for c in range(k)]
    kept = [c for c in range(k) if sizes[c] > min_cluster]
    pool = kept or [c for c in range(k) if sizes[c] > 0]
    chosen = min(pool, key=lambda c: (cohesion[c], c))
    return Clustering(k, labels.tolist(), sizes, cohesion, kept, int(chosen), fallback=not kept)
