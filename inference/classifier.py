"""The flake classifier: a CNN that scores preselected candidates, as the seed's lab does.

The network is multi-label over the GrapheneClassifier classes (R contrast <= 12 %,
12-19 %, 19-30 %) plus "any"; its job after preselection is to reject false positives
(dirt, residue, the blurred rims of thick crystals) that happen to have a flake's colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit

from .backends import InferenceBackend
from .config import ModelsConfig
from .model_card import ModelCard
from .registry import open_model

__all__ = ["FlakeClassifier"]


class FlakeClassifier:
    """Scores (n, 3, s, s) contrast crops; the model card fixes crop size and classes."""

    def __init__(self, backend: InferenceBackend, card: ModelCard, batch_size: int = 32) -> None:
        if card.task != "flake-classifier":
            raise ValueError(
                f"model {card.name!r} is a {card.task!r} model, not a flake-classifier"
            )
        if card.input.crop_um is None or len(card.input.shape) != 4:
            raise ValueError(f"model card {card.name!r} lacks crop_um or a 4-d input shape")
        self.backend = backend
        self.card = card
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg: ModelsConfig, engine_cache: Path | None = None) -> FlakeClassifier:
        entry, backend = open_model(cfg, cfg.classifier, "flake-classifier", engine_cache)
        return cls(backend, entry.card, cfg.batch_size)

    @property
    def crop_um(self) -> float:
        return float(self.card.input.crop_um or 0.0)

    @property
    def input_px(self) -> int:
        return int(self.card.input.shape[-1] or 0)

    @property
    def classes(self) -> list[str]:
        return list(self.card.output.classes)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        """Per-class probabilities (n, n_classes) for a stack of crops."""
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        out = [
            self.backend.run(crops[i : i + self.batch_size])
            for i in range(0, len(crops), self.batch_size)
        ]
        logits = np.concatenate(out)
        return expit(logits) if self.card.output.activation == "sigmoid" else logits
