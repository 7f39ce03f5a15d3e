"""Streaming statistics shared by the feature-based post-hoc detectors (memory independent of the data size).

* :class:`RunningMoments`: exact streaming mean and scatter matrix (Chan et al.'s pairwise merge, float64),
  memory ``O(D^2)``; PCA from it is exact.
* :class:`ClassSums`: per-class counts and sums, memory ``O(C * D)``.
* :class:`RowSampler`: a bounded, seeded uniform sample of rows ("bottom-k" sampling: each row gets a
  pseudo-random key hashed from its running index and the seed, and the ``capacity`` rows with the smallest
  keys are kept). The sample depends only on the row order and the seed, **not** on how the rows were split
  into batches, so a streaming fit equals a one-shot fit; it holds every row while ``N <= capacity``.
* :func:`top_eigh` (sign-fixed eigenvectors, descending) and :func:`kmeans` (small seeded k-means++ / Lloyd).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ClassSums", "RowSampler", "RunningMoments", "class_labels", "hash_keys", "kmeans", "top_eigh"]

_M32 = 0xFFFFFFFF


class RunningMoments:
    """Exact streaming mean and scatter ``sum_i (x_i - mean)(x_i - mean)^T`` of ``(B, D)`` batches (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.scatter: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Merge one batch ``(B, D)``."""
        x = x.detach().to(torch.float64).reshape(x.shape[0], -1)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        xc = x - mb
        sb = xc.T @ xc
        if self.mean is None or self.scatter is None:
            self.n, self.mean, self.scatter = nb, mb, sb
            return
        if mb.shape != self.mean.shape:
            raise ValueError(f"feature dimension changed between batches: {self.mean.shape[0]} -> {mb.shape[0]}")
        delta = mb - self.mean
        n = self.n + nb
        self.mean = self.mean + delta * (nb / n)
        self.scatter = self.scatter + sb + torch.outer(delta, delta) * (self.n * nb / n)
        self.n = n

    def covariance(self, ddof: int = 0) -> Tensor:
        """The covariance ``scatter / (N - ddof)``.

        ``ddof = 0`` gives the maximum-likelihood estimate, as sklearn's ``EmpiricalCovariance`` and
        ``StandardScaler``.
        """
        if self.scatter is None or self.n - ddof <= 0:
            raise ValueError(f"not enough samples for a covariance (got {self.n})")
        return self.scatter / (self.n - ddof)


class ClassSums:
    """Per-class counts and sums of ``(B, D)`` rows with integer labels (float64; grows with the labels seen)."""

    def __init__(self) -> None:
        self.counts: Tensor | None = None
        self.sums: Tensor | None = None

    def update(self, x: Tensor, labels: Tensor) -> None:
        """Add one batch of rows ``(B, D)`` with labels ``(B,)``."""
        x = x.detach().to(torch.float64).reshape(x.shape[0], -1)
        labels = labels.detach().reshape(-1).long().to(x.device)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"got {labels.shape[0]} labels for {x.shape[0]} rows")
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"class labels must be >= 0, got {int(labels.min())}")
        c = int(labels.max()) + 1 if labels.numel() else 0
        if self.sums is None or self.counts is None:
            self.sums = x.new_zeros(c, x.shape[1])
            self.counts = x.new_zeros(c)
        if c > self.sums.shape[0]:
            grow = c - self.sums.shape[0]
            self.sums = torch.cat([self.sums, self.sums.new_zeros(grow, self.sums.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
        self.sums.index_add_(0, labels, x)
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def means(self) -> tuple[Tensor, Tensor]:
        """``(means (C', D), class ids (C',))`` of the classes that have at least one row."""
        if self.sums is None or self.counts is None or not bool((self.counts > 0).any()):
            raise ValueError("no labelled rows were seen")
        present = torch.nonzero(self.counts > 0).reshape(-1)
        return self.sums[present] / self.counts[present, None], present


def hash_keys(index: Tensor, seed: int) -> Tensor:
    """Pseudo-random 63-bit int64 keys for running row indices.

    A 32-bit integer hash of ``index`` and ``seed`` fills the high bits and the index the low bits, so keys are
    unique for ``index < 2**32``.
    """
    x = (index.long() + (((seed + 1) * 0x9E3779B9) & _M32)) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    x = x ^ (x >> 16)
    return ((x >> 1) << 32) | (index.long() & _M32)


class RowSampler:
    """A bounded uniform sample of rows (and optional labels), independent of the batching.

    Storage grows geometrically up to ``capacity`` rows; once full, a row replaces the kept row with the
    largest key when its own key is smaller (in place, so a full sampler costs ``O(B)`` per batch plus the
    replaced rows).

    Args:
        capacity: the most rows kept.
        seed: seed of the row keys. Defaults to 0.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.seen = 0
        self.n = 0
        self._keys: Tensor | None = None
        self._rows: Tensor | None = None
        self._labels: Tensor | None = None

    def _reserve(self, size: int, rows: Tensor, labels: Tensor | None) -> None:
        alloc = 0 if self._rows is None else self._rows.shape[0]
        if size <= alloc:
            return
        alloc = min(self.capacity, max(size, 2 * alloc, 256))
        new_rows = rows.new_empty((alloc, *rows.shape[1:]))
        new_keys = torch.empty(alloc, dtype=torch.long, device=rows.device)
        new_labels = None if labels is None else torch.empty(alloc, dtype=torch.long, device=rows.device)
        if self._rows is not None and self._keys is not None:
            new_rows[: self.n], new_keys[: self.n] = self._rows[: self.n], self._keys[: self.n]
            if new_labels is not None and self._labels is not None:
                new_labels[: self.n] = self._labels[: self.n]
        self._rows, self._keys, self._labels = new_rows, new_keys, new_labels

    def update(self, rows: Tensor, labels: Tensor | None = None) -> None:
        """Offer one batch of rows ``(B, ...)`` (and labels ``(B,)``; give them with every batch or never)."""
        b = rows.shape[0]
        keys = hash_keys(torch.arange(self.seen, self.seen + b), self.seed).to(rows.device)
        rows = rows.detach()
        labels = None if labels is None else labels.detach().reshape(-1).long().to(rows.device)
        if self.seen > 0 and (labels is None) != (self._labels is None):
            raise ValueError("give labels with every batch or with none")
        self.seen += b
        take = min(self.capacity - self.n, b)
        if take > 0:  # filling
            self._reserve(self.n + take, rows, labels)
            assert self._rows is not None
            assert self._keys is not None
            self._rows[self.n : self.n + take], self._keys[self.n : self.n + take] = rows[:take], keys[:take]
            if labels is not None and self._labels is not None:
                self._labels[self.n : self.n + take] = labels[:take]
            self.n += take
            rows, keys, labels = rows[take:], keys[take:], None if labels is None else labels[take:]
        if keys.numel() == 0 or self._keys is None or self._rows is None:
            return
        cand = keys < self._keys.max()  # full: only smaller keys than the largest kept one compete
        if not bool(cand.any()):
            return
        keys, rows = keys[cand], rows[cand]
        keep = torch.topk(torch.cat([self._keys, keys]), self.capacity, largest=False, sorted=False).indices
        new = keep[keep >= self.capacity] - self.capacity
        dropped = torch.ones(self.capacity, dtype=torch.bool, device=keys.device)
        dropped[keep[keep < self.capacity]] = False
        slots = torch.nonzero(dropped).reshape(-1)
        self._rows[slots], self._keys[slots] = rows[new], keys[new]
        if labels is not None and self._labels is not None:
            self._labels[slots] = labels[cand][new]

    def sample(self) -> tuple[Tensor, Tensor | None]:
        """The kept rows in arrival order (so independent of the batching) and their labels."""
        if self._keys is None or self._rows is None or self.n == 0:
            raise ValueError("the sampler has seen no rows")
        order = torch.argsort(self._keys[: self.n] & _M32)  # the low bits hold the running row index
        return self._rows[: self.n][order], None if self._labels is None else self._labels[: self.n][order]


def top_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of a symmetric matrix, eigenvalues descending.

    Each eigenvector's largest-magnitude entry is made positive, so the basis is reproducible.

    Returns:
        ``(eigenvalues (D,), eigenvectors (D, D))`` with eigenvectors as columns.
    """
    vals, vecs = torch.linalg.eigh(matrix.to(torch.float64))
    vals, vecs = vals.flip(0), vecs.flip(1)
    idx = vecs.abs().argmax(0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1])])
    return vals, (vecs * torch.where(signs == 0, 1.0, signs).to(vecs)).contiguous()


def kmeans(x: Tensor, k: int, seed: int = 0, iters: int = 50) -> Tensor:
    """Seeded k-means (k-means++ initialisation, Lloyd iterations, Euclidean) of ``x (N, D)``.

    Returns:
        ``(min(k, N), D)`` centroids. With ``N <= k`` the rows themselves.
    """
    if x.shape[0] <= k:
        return x.clone()
    g = torch.Generator().manual_seed(seed)
    centres = [x[int(torch.randint(x.shape[0], (1,), generator=g))]]
    for _ in range(k - 1):
        d2 = torch.cdist(x, torch.stack(centres)).amin(1) ** 2
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / d2.numel())
        centres.append(x[int(torch.multinomial(probs.cpu().float(), 1, generator=g))])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = c.clone()
        for j in range(k):
            members = x[assign == j]
            if members.shape[0]:
                new[j] = members.mean(0)
        if torch.equal(new, c):
            break
        c = new
    return c


def class_labels(logits: Tensor | None, labels: Tensor | None, owner: str, use_predicted: bool) -> Tensor:
    """The class labels a class-conditional fit uses: the given ones, or ``argmax(logits)`` when allowed.

    Raises:
        ValueError: no labels were given and ``use_predicted`` is off (or no logits are available).
    """
    if labels is not None:
        return labels.reshape(-1).long()
    if use_predicted and logits is not None:
        return logits.argmax(dim=1)
    raise ValueError(
        f"{owner} is class-conditional and needs the training labels: give loader batches with a 'label' "
        "(or fit_features(..., labels)), or build it with use_predicted_labels=True to use argmax(logits)"
    )
