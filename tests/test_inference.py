"""Backends, the shipped classifier and the tile pipeline."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flakescan.hardware.frame import Frame
from flakescan.inference.backends import BackendUnavailable, OnnxRuntimeBackend, create_backend
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig, default_classifier_path
from flakescan.inference.crops import classifier_crop
from flakescan.inference.model_card import load_model_card
from flakescan.inference.pipeline import TilePipeline
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.render import FieldRenderer

PX = 0.57


def gpu_available() -> bool:
    try:
        import pycuda.autoinit  # noqa: F401
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def classifier() -> FlakeClassifier:
    return FlakeClassifier.from_config(ModelsConfig())


def test_the_shipped_model_has_a_matching_card():
    card = load_model_card(default_classifier_path())
    assert card.task == "flake-classifier"
    assert card.input.shape == [None, 3, 64, 64]
    assert card.output.classes == ["class1_R_le_12", "class2_R_12_19", "class3_R_19_30", "any"]
    assert card.metrics["per_class"]["any"]["f1"] >= 0.9  # on held-out simulated chips
    assert default_classifier_path().stat().st_size < 5 * 1024 * 1024  # a few MB at most
    # The card says how to reproduce this very file.
    command = card.training.get("command", "")
    assert "train_classifier" in command or "train classifier" in command
    assert "--out inference/models/flake_classifier_cnn4.onnx" in command


def test_a_card_that_does_not_match_its_model_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(default_classifier_path(), model)
    shutil.copy(default_classifier_path().with_suffix(".json"), model.with_suffix(".json"))
    with open(model, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256 differs"):
        load_model_card(model)
    model.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="model card not found"):
        load_model_card(model)


def test_onnxruntime_on_the_cpu():
    backend = create_backend(default_classifier_path(), "onnxruntime", "cpu")
    assert isinstance(backend, OnnxRuntimeBackend)
    out = backend.run(np.zeros((3, 3, 64, 64), np.float32))
    assert out.shape == (3, 4) and np.isfinite(out).all()


@pytest.mark.skipif(gpu_available(), reason="a GPU is present: the refusal path does not apply")
def test_a_requested_gpu_is_never_replaced_by_the_cpu():
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        create_backend(default_classifier_path(), "onnxruntime", "cuda")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        create_backend(default_classifier_path(), "tensorrt", "cuda")
    with pytest.raises(BackendUnavailable, match="only with device 'cuda'"):
        create_backend(default_classifier_path(), "tensorrt", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU with TensorRT on this machine")
def test_tensorrt_agrees_with_onnxruntime():  # pragma: no cover - needs a GPU
    from concurrent.futures import ThreadPoolExecutor

    batch = np.random.default_rng(0).normal(0, 0.05, (40, 3, 64, 64)).astype(np.float32)
    backend = create_backend(default_classifier_path(), "tensorrt", "cuda")
    # Loaded on this thread, run on another: as the daemon's processing worker does.
    with ThreadPoolExecutor(1) as pool:
        trt = pool.submit(backend.run, batch).result()
    ort = create_backend(default_classifier_path(), "onnxruntime", "cpu").run(batch)
    np.testing.assert_allclose(trt, ort, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU with TensorRT on this machine")
def test_tensorrt_engines_are_cached_and_rebuilt_when_stale(tmp_path):  # pragma: no cover
    model, cache = default_classifier_path(), tmp_path / "engines"
    first = create_backend(model, "tensorrt", "cuda", engine_cache=cache)
    assert first.describe()["engine"] == "built"
    (engine_file,) = cache.glob("flake_classifier_cnn4-*.engine")
    second = create_backend(model, "tensorrt", "cuda", engine_cache=cache)
    assert second.describe()["engine"] == "cached"
    engine_file.write_bytes(engine_file.read_bytes()[:100])  # truncated on disk
    third = create_backend(model, "tensorrt", "cuda", engine_cache=cache)
    assert third.describe()["engine"] == "rebuilt"
    batch = np.zeros((2, 3, 64, 64), np.float32)
    np.testing.assert_allclose(third.run(batch), first.run(batch), atol=1e-5)


@pytest.fixture(scope="module")
def scene():
    chip = generate_chip(ChipSpec(width_um=4000, height_um=4000, thin_flakes_per_mm2=12), 21)
    return chip, FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=21)


def frame_at(renderer: FieldRenderer, x: float, y: float, index: int = 0) -> Frame:
    return Frame(renderer.render(x, y, frame_index=index), x, y, 0.0, PX, 0.0, index=index)


def test_pipeline_finds_a_monolayer_where_it_is(classifier, scene):
    chip, r = scene
    flakes = [f for f in chip.flakes(1, 1) if f.parent_id is None and f.area_um2 > 200][:5]
    assert flakes
    pipe = TilePipeline(PreselectionConfig(), classifier)
    for f in flakes:
        fx, fy = f.centroid_um
        res = pipe.process(frame_at(r, fx + 80, fy - 60))  # flake off-centre in the frame
        near = [h for h in res.hits if np.hypot(h.x_um - fx, h.y_um - fy) <= f.radius_um]
        assert near, f"monolayer {f.id} at {f.centroid_um} not found"
        h = near[0]
        assert h.contrast_class == 1 and h.flake_class == 1
        assert h.bbox_um[0] <= fx <= h.bbox_um[2] and h.bbox_um[1] <= fy <= h.bbox_um[3]
        assert h.area_um2 == pytest.approx(f.area_um2, rel=0.35)
        assert h.axis_angle_deg is not None and 0 <= h.axis_angle_deg < 30
        assert h.thumbnail.dtype == np.uint8 and h.thumbnail.ndim == 3
        assert set(res.timings_ms) == {"preselection", "classifier", "axis", "total"}


def test_classifier_scores_flakes_above_dirt_and_wafer(classifier, scene):
    chip, r = scene
    from flakescan.inference.preselection import preselect

    def score_at(x: float, y: float) -> float:
        res = preselect(r.render(x, y), PX, PreselectionConfig())
        crop = classifier_crop(
            res.contrast, (383.5, 511.5), PX, classifier.crop_um, classifier.input_px
        )
        return float(classifier.scores(crop[None])[0, -1])

    flake = max(chip.flakes(1, 2), key=lambda o: o.area_um2)
    dust = next(o for o in chip.objects if o.kind == "dust")
    assert score_at(*flake.centroid_um) > 0.5
    assert score_at(*dust.centroid_um) < 0.5


def test_the_pipeline_finds_nothing_off_the_chip(classifier, scene):
    _, r = scene
    pipe = TilePipeline(PreselectionConfig(), classifier)
    on_chip = pipe.process(frame_at(r, 2000, 2000, 0))
    assert on_chip.skipped_reason is None and pipe.wafer_colour is not None
    off = pipe.process(frame_at(r, -2000, 2000, 1))  # the holder: nothing like the wafer
    assert off.hits == [] and "bare wafer" in (off.skipped_reason or "")
