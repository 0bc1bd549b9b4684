"""Powder-XRD phase classifiers: the seed's Gramian-angular-field CNN and a 1-D CNN, plus a
novelty head that flags inputs unlike any trained phase.

Both networks take the same served input, the min-max normalised pattern on the card's
2-theta grid, so one preprocessing serves both and the comparison is fair. Everything the
seed did outside its network (pyts's Gramian angular field, the image) is a fixed layer
inside the graph here: the ONNX file is the whole model, and ONNX Runtime needs no pyts.

The GAF follows pyts: piecewise aggregate approximation (PAA: mean over equal segments),
min-max scaling to [-1, 1], phi = arccos(x); summation field cos(phi_i + phi_j) and
difference field sin(phi_i - phi_j) (the seed used the difference field; both are two input
channels here). Written with products instead of arccos:
cos(a + b) = x_i x_j - s_i s_j and sin(a - b) = s_i x_j - x_i s_j with s = sqrt(1 - x^2).

Both networks also get the 2-theta coordinate as an input channel (CoordConv, Liu et al.
2018): a phase is named by where its peaks are, and convolutions with global pooling are
blind to absolute position (graphite's (002) at 26.54 deg and hBN's at 26.76 deg look the
same to them).

Intensities enter as sqrt(I): a weak peak of a minor phase matters as much for the answer as
the strongest line, and sqrt is the variance-stabilising transform of counting noise.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "XRD_ARCHITECTURES",
    "GramianAngularField",
    "NoveltyHead",
    "ScoredXrdModel",
    "XrdCnn1d",
    "XrdGafCnn",
    "build_xrd_model",
]


class GramianAngularField(nn.Module):
    """(n, L) patterns -> (n, 2, S, S) summation and difference fields, as pyts makes them."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape
        if length % self.image_size:
            raise ValueError(f"pattern length {length} is not a multiple of {self.image_size}")
        paa = x.reshape(n, self.image_size, length // self.image_size).mean(dim=2)
        lo = paa.min(dim=1, keepdim=True).values
        hi = paa.max(dim=1, keepdim=True).values
        scaled = (2 * paa - hi - lo) / (hi - lo).clamp_min(1e-12)
        scaled = scaled.clamp(-1.0, 1.0)
        s = torch.sqrt((1 - scaled * scaled).clamp_min(0.0))
        xi, xj = scaled[:, :, None], scaled[:, None, :]
        si, sj = s[:, :, None], s[:, None, :]
        gasf = xi * xj - si * sj
        gadf = si * xj - xi * sj
        return torch.stack([gasf, gadf], dim=1)


def _conv2d(c_in: int, c_out: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _conv1d(c_in: int, c_out: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class XrdGafCnn(nn.Module):
    """sqrt -> GAF image (2 channels) + 2 coordinate channels -> strided conv blocks ->
    embedding -> logits."""

    def __init__(self, n_classes: int, image_size: int = 500, width: int = 16) -> None:
        super().__init__()
        self.gaf = GramianAngularField(image_size)
        w = width
        self.features = nn.Sequential(
            _conv2d(4, w, 8, 4),
            _conv2d(w, 2 * w, 3, 2),
            _conv2d(2 * w, 4 * w, 3, 2),
            _conv2d(4 * w, 8 * w, 3, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed_dim = 8 * w
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        img = self.gaf(torch.sqrt(x.clamp_min(0.0)))
        n, _, h, w = img.shape
        rows = torch.linspace(-1.0, 1.0, h, dtype=img.dtype)[None, None, :, None].expand(n, 1, h, w)
        cols = torch.linspace(-1.0, 1.0, w, dtype=img.dtype)[None, None, None, :].expand(n, 1, h, w)
        return self.features(torch.cat([img, rows, cols], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


class XrdCnn1d(nn.Module):
    """sqrt and 2-theta coordinate -> five strided 1-D conv blocks -> mean and max pooling ->
    embedding -> logits."""

    def __init__(self, n_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv1d(2, w, 9, 2),
            _conv1d(w, 2 * w, 9, 2),
            _conv1d(2 * w, 3 * w, 9, 2),
            _conv1d(3 * w, 4 * w, 9, 2),
            _conv1d(4 * w, 6 * w, 9, 2),
        )
        self.embed_dim = 12 * w
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape
        coord = torch.linspace(-1.0, 1.0, length, dtype=x.dtype)[None, None, :].expand(n, 1, length)
        f = self.features(torch.cat([torch.sqrt(x.clamp_min(0.0))[:, None, :], coord], dim=1))
        return torch.cat([f.mean(dim=2), f.amax(dim=2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


XRD_ARCHITECTURES = {"gaf": XrdGafCnn, "cnn1d": XrdCnn1d}


def build_xrd_model(arch: str, n_classes: int) -> nn.Module:
    if arch not in XRD_ARCHITECTURES:
        raise ValueError(f"--arch {arch!r}: expected one of {sorted(XRD_ARCHITECTURES)}")
    return XRD_ARCHITECTURES[arch](n_classes)


class NoveltyHead(nn.Module):
    """Mahalanobis distance of an embedding to the nearest known-phase class mean.

    Softmax scores are confident on inputs unlike anything trained (a new phase gets a high
    probability of whichever class it resembles most), so the anomaly class alone cannot be
    trusted with unknown inputs. A Gaussian per class with one shared covariance in the
    embedding space (Lee et al. 2018, "a simple unified framework for detecting
    out-of-distribution samples") measures how far an input is from every trained phase.
    """

    def __init__(self, means: torch.Tensor, precision_cholesky: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)  # (C, D)
        self.register_buffer("chol", precision_cholesky)  # (D, D): P = L L^T

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        # Differences first, then the transform: expanding |z - m|^2 would cancel digits in
        # float32 and make ONNX Runtime and PyTorch disagree.
        diff = (emb[:, None, :] - self.means[None, :, :]) @ self.chol  # (n, C, D)
        return torch.sqrt((diff * diff).sum(dim=2).amin(dim=1))

    @classmethod
    def fit(cls, emb: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> NoveltyHead:
        """Class means and a shrunk shared covariance from training embeddings."""
        means = torch.stack([emb[labels == c].mean(0) for c in classes])
        centred = torch.cat([emb[labels == c] - means[i] for i, c in enumerate(classes)])
        cov = centred.T @ centred / max(len(centred) - len(classes), 1)
        d = cov.shape[0]
        cov = cov + 0.05 * torch.trace(cov) / d * torch.eye(d)  # shrinkage: few samples per dim
        precision = torch.linalg.inv(cov.double())
        chol = torch.linalg.cholesky(precision).float()
        return cls(means.float(), chol)


class ScoredXrdModel(nn.Module):
    """What is exported: [class logits..., novelty distance] in one output row."""

    def __init__(self, model: nn.Module, novelty: NoveltyHead) -> None:
        super().__init__()
        self.model = model
        self.novelty = novelty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.model.embed(x)
        return torch.cat([self.model.head(emb), self.novelty(emb)[:, None]], dim=1)
