"""Inference backends: one interface, ONNX Runtime on the CPU, TensorRT on a GPU.

A backend runs a batch through one model. Which backend and device are used is the user's
choice in `[models]`; if the choice cannot be honoured (no GPU, no CUDA provider, TensorRT
missing) `BackendUnavailable` says why, and nothing falls back to the CPU behind the user's
back. TensorRT and pycuda are imported only when a TensorRT backend is created.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .engine_cache import EngineCache, engine_key

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
    # How the backend was chosen: "config", or "auto" with the reasons others were passed over.
    selected_by: str = "config"
    passed_over: tuple[str, ...] = ()

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs of the model's first output for a (n, ...) float32 batch."""

    def describe(self) -> dict:
        info: dict = {"backend": self.name, "device": self.device, "selected_by": self.selected_by}
        if self.passed_over:
            info["passed_over"] = list(self.passed_over)
        return info


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

    def __init__(
        self, model_path: Path, max_batch: int = 32, engine_cache: Path | None = None
    ) -> None:
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
            device = cuda.Device(0)
            # An explicit context, made current around every call: the model is loaded on
            # one thread and run on the daemon's processing worker, another thread.
            self._cuda_context = device.make_context()
        except Exception as exc:  # no driver, no device
            raise BackendUnavailable(f"models.backend = 'tensorrt' but no CUDA GPU: {exc}") from exc
        try:
            self._load(trt, Path(model_path), max_batch, device, engine_cache)
        except BaseException:
            self._cuda_context.pop()
            raise
        self._cuda_context.pop()
        self.device = "cuda"
        self._cuda = cuda

    def _load(
        self, trt: Any, model_path: Path, max_batch: int, device: Any, cache_dir: Path | None
    ) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)

        def deserialize(blob: bytes) -> Any:
            return runtime.deserialize_cuda_engine(blob)

        def build() -> bytes:
            return self._build(trt, logger, model_path, max_batch)

        major, minor = device.compute_capability()
        key = engine_key(
            hashlib.sha256(model_path.read_bytes()).hexdigest(),
            trt.__version__,
            device.name(),
            f"{major}.{minor}",
            max_batch,
        )
        if cache_dir is None:
            self._engine, self.engine_source = deserialize(build()), "built (no cache)"
        else:
            self._engine, self.engine_source = EngineCache(cache_dir).load_or_build(
                model_path.stem, key, build, deserialize
            )
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT could not load the engine for {model_path}")
        self._execution = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = self._engine.get_tensor_mode
        self._input = next(n for n in names if mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if mode(n) == trt.TensorIOMode.OUTPUT)
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        self._max_batch = max_batch

    @staticmethod
    def _build(trt: Any, logger: Any, model_path: Path, max_batch: int) -> bytes:
        """A strongly typed network: every tensor keeps the ONNX file's precision, so an
        FP16 model runs in FP16 and an FP32 model in FP32, never silently lowered."""
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model_path.read_bytes()):
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
        return bytes(serialized)

    def describe(self) -> dict:
        return {**super().describe(), "engine": self.engine_source}

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
            # The engine's own I/O types (FP16 for an FP16 model): cast in, float32 out.
            part = np.ascontiguousarray(
                batch[start : start + self._max_batch], dtype=self._in_dtype
            )
            self._execution.set_input_shape(self._input, part.shape)
            out_shape = tuple(self._execution.get_tensor_shape(self._output))
            out = np.empty(out_shape, self._out_dtype)
            d_in, d_out = cuda.mem_alloc(part.nbytes), cuda.mem_alloc(out.nbytes)
            cuda.memcpy_htod(d_in, part)
            self._execution.set_tensor_address(self._input, int(d_in))
            self._execution.set_tensor_address(self._output, int(d_out))
            stream = cuda.Stream()
            self._execution.execute_async_v3(stream.handle)
            cuda.memcpy_dtoh_async(out, d_out, stream)
            stream.synchronize()
            outputs.append(out.astype(np.float32))
        return np.concatenate(outputs)


def create_backend(
    model_path: Path,
    backend: str = "onnxruntime",
    device: str = "cpu",
    intra_op_threads: int = 0,
    engine_cache: Path | None = None,
) -> InferenceBackend:
    """The backend the configuration asks for, or BackendUnavailable saying why not.

    "auto" takes the fastest that runs here — TensorRT on a GPU, then ONNX Runtime on CUDA,
    then ONNX Runtime on the CPU — and records why it passed the others over, so the
    daemon's status shows what runs and why. An explicit choice is never replaced.
    """
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model_path, device=device, intra_op_threads=intra_op_threads)
    if backend == "tensorrt":
        if device != "cuda":
            raise BackendUnavailable("models.backend = 'tensorrt' runs only with device 'cuda'")
        return TensorRTBackend(model_path, engine_cache=engine_cache)
    if backend == "auto":
        passed_over: list[str] = []
        attempts: list[tuple[str, Any]] = [
            ("tensorrt", lambda: TensorRTBackend(model_path, engine_cache=engine_cache)),
            ("onnxruntime/cuda", lambda: OnnxRuntimeBackend(model_path, "cuda", intra_op_threads)),
            ("onnxruntime/cpu", lambda: OnnxRuntimeBackend(model_path, "cpu", intra_op_threads)),
        ]
        for label, make in attempts:
            try:
                chosen = make()
            except BackendUnavailable as exc:
                passed_over.append(f"{label}: {exc}")
                continue
            chosen.selected_by = "auto"
            chosen.passed_over = tuple(passed_over)
            return chosen
        raise BackendUnavailable("no backend runs here: " + "; ".join(passed_over))
    raise BackendUnavailable(
        f"models.backend = {backend!r}: expected 'auto', 'onnxruntime' or 'tensorrt'"
    )
