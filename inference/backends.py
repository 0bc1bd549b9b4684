"""Inference backends: one interface, ONNX Runtime on the CPU, TensorRT on a GPU.

A backend runs a batch through one model. Which backend and device are used is the user's
choice in `[models]`; if the choice cannot be honoured (no GPU, no CUDA provider, TensorRT
missing) `BackendUnavailable` says why, and nothing falls back to the CPU behind the user's
back. TensorRT and pycuda are imported only when a TensorRT backend is created.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BackendUnavailable",
    "InferenceBackend",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "create_backend",
]


class BackendUnavailable(RuntimeError):
    """The requested backend or device cannot run here; the message says why."""


class InferenceBackend(ABC):
    """Runs batches through one model: float32 in, float32 out."""

    name: str
    device: str

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs of the model's first output for a (n, ...) float32 batch."""

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device}


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime, on the CPU or through its CUDA execution provider."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, device: str = "cpu", intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "models.device = 'cuda' but this ONNX Runtime has no CUDAExecutionProvider "
                    f"(available: {ort.get_available_providers()}); install onnxruntime-gpu "
                    "on a machine with a GPU, or set models.device = 'cpu'"
                )
            providers = ["CUDAExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendUnavailable(f"models.device = {device!r}: expected 'cpu' or 'cuda'")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        self.device = device
        self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        used = self.session.get_providers()
        if providers[0] not in used:  # ORT may drop a provider it cannot initialise
            raise BackendUnavailable(f"ONNX Runtime could not start {providers[0]} (got {used})")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class TensorRTBackend(InferenceBackend):
    """TensorRT engine built from the ONNX model, run through pycuda (GPU only)."""

    name = "tensorrt"

    def __init__(self, model_path: Path, max_batch: int = 32) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(
                f"models.backend = 'tensorrt' needs tensorrt and pycuda ({exc}); "
                "install flakescan[gpu] on a machine with an NVIDIA GPU"
            ) from exc
        try:
            cuda.init()
            # An explicit context, made current around every call: the model is loaded on
            # one thread and run on the daemon's processing worker, another thread.
            self._cuda_context = cuda.Device(0).make_context()
        except Exception as exc:  # no driver, no device
            raise BackendUnavailable(f"models.backend = 'tensorrt' but no CUDA GPU: {exc}") from exc
        try:
            self._build(trt, model_path, max_batch)
        finally:
            self._cuda_context.pop()
        self.device = "cuda"
        self._cuda = cuda

    def _build(self, trt: Any, model_path: Path, max_batch: int) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(Path(model_path).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT could not parse {model_path}: {errors}")
        config = builder.create_builder_config()
        inp = network.get_input(0)
        profile = builder.create_optimization_profile()
        shape = list(inp.shape)
        lo, hi = [1, *shape[1:]], [max_batch, *shape[1:]]
        profile.set_shape(inp.name, lo, hi, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailable(f"TensorRT failed to build an engine for {model_path}")
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        self._execution = self._engine.create_execution_context()
        self._input = inp.name
        self._output = network.get_output(0).name
        self._max_batch = max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._cuda_context.push()
        try:
            return self._run(batch)
        finally:
            self._cuda_context.pop()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        outputs = []
        for start in range(0, len(batch), self._max_batch):
            part = np.ascontiguousarray(batch[start : start + self._max_batch], dtype=np.float32)
            self._execution.set_input_shape(self._input, part.shape)
            out_shape = tuple(self._execution.get_tensor_shape(self._output))
            out = np.empty(out_shape, np.float32)
            d_in, d_out = cuda.mem_alloc(part.nbytes), cuda.mem_alloc(out.nbytes)
            cuda.memcpy_htod(d_in, part)
            self._execution.set_tensor_address(self._input, int(d_in))
            self._execution.set_tensor_address(self._output, int(d_out))
            stream = cuda.Stream()
            self._execution.execute_async_v3(stream.handle)
            cuda.memcpy_dtoh_async(out, d_out, stream)
            stream.synchronize()
            outputs.append(out)
        return np.concatenate(outputs)


def create_backend(
    model_path: Path, backend: str = "onnxruntime", device: str = "cpu", intra_op_threads: int = 0
) -> InferenceBackend:
    """The backend the configuration asks for, or BackendUnavailable saying why not."""
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model_path, device=device, intra_op_threads=intra_op_threads)
    if backend == "tensorrt":
        if device != "cuda":
            raise BackendUnavailable("models.backend = 'tensorrt' runs only with device 'cuda'")
        return TensorRTBackend(model_path)
    raise BackendUnavailable(f"models.backend = {backend!r}: expected 'onnxruntime' or 'tensorrt'")
