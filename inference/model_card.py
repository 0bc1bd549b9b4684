"""Model cards: what an ONNX model expects, what it answers, and how it was made.

Every model flakescan serves sits next to a JSON card of the same stem. The card is the
contract between `training/` (which writes it) and `inference/` (which refuses a model whose
card is missing or does not match the file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelCard", "ModelInput", "ModelOutput", "file_sha256", "load_model_card"]


class ModelInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shape: list[int | None]  # None: dynamic (batch)
    representation: str
    crop_um: float | None = Field(None, gt=0)
    # 1-D diffraction patterns: the 2-theta grid (start deg, step deg, points) the model reads
    two_theta_deg: tuple[float, float, int] | None = None


class ModelOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    classes: list[str] = []
    activation: str = "sigmoid"
    # axis regressors: angles repeat every modulus_deg; encoding names the target vector
    modulus_deg: float | None = Field(None, gt=0, le=360)
    encoding: str | None = None


class ModelCard(BaseModel):
    """The JSON card next to each ONNX model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: str
    architecture: str
    parameters: int
    input: ModelInput
    output: ModelOutput
    threshold: float | None = None
    training: dict = {}
    metrics: dict = {}
    onnx_sha256: str


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model_card(model_path: Path, *, verify: bool = True) -> ModelCard:
    """Read the card `<stem>.json` beside `model_path`; check it describes this very file."""
    model_path = Path(model_path)
    card_path = model_path.with_suffix(".json")
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    if not card_path.is_file():
        raise FileNotFoundError(f"model card not found: {card_path} (every model needs one)")
    card = ModelCard.model_validate(json.loads(card_path.read_text()))
    if verify and card.onnx_sha256 != file_sha256(model_path):
        raise ValueError(
            f"model card {card_path.name} does not match {model_path.name} (sha256 differs): "
            "re-export the model with its card"
        )
    return card
