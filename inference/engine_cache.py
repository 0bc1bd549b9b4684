"""TensorRT engines cached on disk, keyed by what makes an engine valid.

Building an engine takes tens of seconds to minutes, so the daemon keeps them. An engine is
only valid for the exact ONNX file, TensorRT version and GPU (model and compute capability)
it was built for, and for its batch profile; the key holds all of them. A cached engine
that no longer deserialises (a driver update, a truncated file) is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["EngineCache", "engine_key"]

log = logging.getLogger(__name__)
Engine = TypeVar("Engine")


def engine_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, max_batch: int
) -> str:
    """A short stable hash of everything an engine depends on."""
    text = "|".join([onnx_sha256, trt_version, gpu_name, compute_capability, str(max_batch)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class EngineCache:
    """A folder of serialised engines, `<model>-<key>.engine`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path_for(self, model_name: str, key: str) -> Path:
        return self.folder / f"{model_name}-{key}.engine"

    def load_or_build(
        self,
        model_name: str,
        key: str,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], Engine | None],
    ) -> tuple[Engine, str]:
        """The engine and how it was obtained: "cached", "built" or "rebuilt"."""
        path = self.path_for(model_name, key)
        how = "built"
        if path.is_file():
            try:
                engine = deserialize(path.read_bytes())
            except Exception as exc:  # a corrupt file may also raise
                log.warning("cached TensorRT engine %s does not load (%s): rebuilding", path, exc)
                engine = None
            else:
                if engine is None:
                    log.warning("cached TensorRT engine %s does not load: rebuilding", path)
            if engine is not None:
                return engine, "cached"
            how = "rebuilt"
        blob = build()
        engine = deserialize(blob)
        if engine is None:
            raise RuntimeError(f"a freshly built TensorRT engine for {model_name} does not load")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        return engine, how
