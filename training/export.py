"""ONNX export that the installed ONNX Runtime is known to read, checked against PyTorch.

A model is only useful if the daemon's runtime can load it. torch stamps its files with its
own choice of opset and IR version; an older ONNX Runtime on a microscope PC may refuse
them. So the exporter pins the opset, lowers the IR version to what this ONNX Runtime
accepts (probed, not looked up in a table), re-reads the file in ONNX Runtime and compares
its outputs with PyTorch's on the same inputs before anyone may use it.

Every trainer in `training/` exports through here and writes its card with `write_card`.
"""

from __future__ import annotations

import functools
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flakescan.inference.model_card import ModelCard, file_sha256, load_model_card

__all__ = [
    "ONNX_OPSET",
    "ORT_TOLERANCE",
    "dataset_sha256",
    "export_onnx",
    "onnxruntime_limits",
    "torch_outputs",
    "verify_onnx",
    "write_card",
]

ONNX_OPSET = 17  # read by every ONNX Runtime since 1.11 and by TensorRT 8.6+
ORT_TOLERANCE = 1e-4  # float32 max |ORT - torch| for a model we accept as "the same"


def _tiny_model_bytes(ir_version: int, opset: int) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


@functools.cache
def onnxruntime_limits() -> tuple[int, int]:
    """(highest IR version, highest default-domain opset) this ONNX Runtime loads, probed."""
    import onnx
    import onnxruntime as ort

    def loads(ir: int, opset: int) -> bool:
        try:
            ort.InferenceSession(_tiny_model_bytes(ir, opset), providers=["CPUExecutionProvider"])
        except Exception:  # any refusal means "cannot read this"
            return False
        return True

    ir = max((v for v in range(3, onnx.IR_VERSION + 1) if loads(v, 7)), default=0)
    opset = max(
        (v for v in range(7, onnx.defs.onnx_opset_version() + 1) if loads(ir, v)), default=0
    )
    if ir == 0 or opset == 0:
        raise RuntimeError(f"ONNX Runtime {ort.__version__} loads none of the probe models")
    return ir, opset


def export_onnx(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    opset: int = ONNX_OPSET,
) -> dict:
    """Export with a dynamic batch axis, pinned opset and an IR version ONNX Runtime reads.

    Writes atomically (a half-written model never sits at `path`); returns the versions
    stamped in the file, for the model card.
    """
    import onnx
    import onnxruntime as ort

    max_ir, max_opset = onnxruntime_limits()
    if opset > max_opset:
        raise ValueError(
            f"opset {opset} is newer than ONNX Runtime {ort.__version__} reads ({max_opset})"
        )
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in torch 2.9+, but the dynamo exporter
            # needs onnxscript, which the training extras do not install.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(raw),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(raw))
        proto.ir_version = min(proto.ir_version, max_ir)
        onnx.checker.check_model(proto)
        staged = Path(tmpdir) / "model.onnx"
        onnx.save(proto, str(staged))
        staged.replace(path)
    return {
        "onnx_opset": opset,
        "onnx_ir_version": int(proto.ir_version),
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
    }


def torch_outputs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's outputs in eval mode, batched, as float32 numpy."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))))
    return torch.cat(out).numpy().astype(np.float32)


def verify_onnx(
    model: nn.Module,
    path: Path,
    x: np.ndarray,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    tolerance: float = ORT_TOLERANCE,
    relative_tolerance: float = 0.0,
) -> float:
    """Max |ORT - torch| on the same batch; raises if shapes differ or any element exceeds
    `tolerance + relative_tolerance * |torch|` (the relative part for outputs that are large
    by nature, such as distances, where float32 rounding grows with the value)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(x, dtype=np.float32)
    (ort_out,) = sess.run([output_name], {input_name: batch})
    ref = torch_outputs(model, batch)
    if ort_out.shape != ref.shape:
        raise RuntimeError(
            f"ONNX Runtime output shape {ort_out.shape} != PyTorch {ref.shape} for {path}"
        )
    err = np.abs(ort_out - ref)
    diff = float(np.max(err))
    if not np.all(err < tolerance + relative_tolerance * np.abs(ref)):
        raise RuntimeError(
            f"ONNX Runtime and PyTorch disagree on {path}: max abs diff {diff:.3g} "
            f">= {tolerance} (+ {relative_tolerance:g} x |value|); the exported model is not the "
            "trained one"
        )
    return diff


def write_card(card: ModelCard, model_path: Path) -> ModelCard:
    """Write `<stem>.json` atomically and read it back, verified against the model file."""
    model_path = Path(model_path)
    if card.onnx_sha256 != file_sha256(model_path):
        raise ValueError(f"card {card.name} was made for another file than {model_path}")
    card_path = model_path.with_suffix(".json")
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=1) + "\n")
    tmp.replace(card_path)
    return load_model_card(model_path)


def dataset_sha256(files: Sequence[Path]) -> str:
    """One hash over a data set's files (names and bytes, in sorted order): the card's
    record of exactly which data a model saw."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()
