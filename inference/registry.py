"""Models by name: a registry folder of ONNX files, each with its card.

A lab keeps its own models (retrained on its camera, its materials) in one folder and names
them in service.toml (`classifier = "hbn_cnn4_2026"`); the models shipped with flakescan are
always found after the lab's. A value with the `.onnx` suffix is a path instead of a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .backends import InferenceBackend, create_backend
from .model_card import ModelCard, load_model_card

if TYPE_CHECKING:
    from .config import ModelsConfig

__all__ = [
    "SHIPPED_MODELS_DIR",
    "ModelEntry",
    "ModelNotFound",
    "ModelRegistry",
    "is_model_path",
    "open_model",
]

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"


class ModelNotFound(LookupError):
    """No model of that name (the message lists the ones there are)."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    card: ModelCard

    def summary(self) -> dict:
        """What `flakescan models` and the daemon's status show of a model."""
        metrics = self.card.metrics
        return {
            "name": self.name,
            "task": self.card.task,
            "path": str(self.path),
            "architecture": self.card.architecture,
            "parameters": self.card.parameters,
            "sha256": self.card.onnx_sha256,
            "modulus_deg": self.card.output.modulus_deg,
            "metrics": {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
        }


def is_model_path(value: str | Path) -> bool:
    """True for a file path (ends in .onnx), False for a registry name."""
    return Path(value).suffix.lower() == ".onnx"


class ModelRegistry:
    """Folders searched in order for `<name>.onnx` with its card `<name>.json`."""

    def __init__(self, folders: list[Path] | tuple[Path, ...] = ()) -> None:
        seen: list[Path] = []
        for f in [*folders, SHIPPED_MODELS_DIR]:
            f = Path(f).expanduser()
            if f not in seen:
                seen.append(f)
        self.folders = tuple(seen)

    def entries(self, task: str | None = None) -> list[ModelEntry]:
        """Every model with a valid card (the first of a name wins), optionally of one task."""
        found: dict[str, ModelEntry] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.onnx")):
                if path.stem in found:
                    continue
                try:
                    card = load_model_card(path)
                except (OSError, ValueError):
                    continue  # not servable; `resolve` names the fault when asked for it
                found[path.stem] = ModelEntry(path.stem, path, card)
        return [e for e in found.values() if task is None or e.card.task == task]

    def resolve(self, value: str | Path, task: str | None) -> ModelEntry:
        """The model a config value means, checked against its card and the expected task
        (None: any task, for callers that dispatch on the card's task)."""
        if is_model_path(value):
            path = Path(value).expanduser()
        else:
            name = str(value)
            candidates = [f / f"{name}.onnx" for f in self.folders]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                known = ", ".join(e.name for e in self.entries(task)) or "none"
                raise ModelNotFound(
                    f"no model named {name!r} in {', '.join(map(str, self.folders))} "
                    f"({task or 'all'} models there: {known})"
                )
        card = load_model_card(path)
        if task is not None and card.task != task:
            raise ValueError(f"model {str(value)!r} is a {card.task!r} model, not a {task!r}")
        return ModelEntry(path.stem, path, card)


def open_model(
    cfg: ModelsConfig, value: str | Path, task: str, engine_cache: Path | None = None
) -> tuple[ModelEntry, InferenceBackend]:
    """A configured model, found by name or path, on the backend `[models]` asks for."""
    entry = ModelRegistry(cfg.registry).resolve(value, task)
    backend = create_backend(
        entry.path, cfg.backend, cfg.device, cfg.intra_op_threads, cfg.engine_cache or engine_cache
    )
    return entry, backend
