"""Models by name, the backend choice, the TensorRT engine cache, and both axis readings."""

from __future__ import annotations

import shutil

import pytest

from flakescan.daemon.config import load_config
from flakescan.inference.axis_model import AXIS_TASK, AxisModel
from flakescan.inference.backends import BackendUnavailable, create_backend
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig, default_classifier_path
from flakescan.inference.engine_cache import EngineCache, engine_key
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
from flakescan.inference.pipeline import TilePipeline
from flakescan.inference.registry import ModelNotFound, ModelRegistry
from flakescan.simulators.chip import ChipSpec, generate_chip
from flakescan.simulators.render import FieldRenderer, ImagingSpec

from .test_inference import PX, frame_at

TILES = [(900, 900), (1500, 1500), (2100, 1200), (1200, 2100)]
torch = pytest.importorskip("torch", reason="making a test axis model needs torch (train extra)")


@pytest.fixture(scope="module")
def lab_registry(tmp_path_factory):
    """A lab's registry folder holding an (untrained) axis regressor with its card."""
    from flakescan.training.export import export_onnx, write_card

    folder = tmp_path_factory.mktemp("lab-models")
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )
    path = folder / "lab_axis.onnx"
    export_onnx(net, path, torch.zeros(1, 3, 64, 64), output_name="angle_vec")
    card = ModelCard(
        name="lab_axis",
        task=AXIS_TASK,
        architecture="test net",
        parameters=sum(p.numel() for p in net.parameters()),
        input=ModelInput(name="input", shape=[None, 3, 64, 64], representation="axis_input"),
        output=ModelOutput(name="angle_vec", activation="none", modulus_deg=30.0),
        onnx_sha256=file_sha256(path),
    )
    write_card(card, path)
    return folder


def test_models_resolve_by_name_from_the_lab_folder_then_the_shipped_ones(lab_registry):
    reg = ModelRegistry([lab_registry])
    assert reg.resolve("lab_axis", AXIS_TASK).path == lab_registry / "lab_axis.onnx"
    shipped = reg.resolve("flake_classifier_cnn4", "flake-classifier")
    assert shipped.path == default_classifier_path()
    names = {e.name for e in reg.entries()}
    assert {"lab_axis", "flake_classifier_cnn4"} <= names
    with pytest.raises(ModelNotFound, match=r"'nope'.*flake-classifier models there: .*cnn4"):
        reg.resolve("nope", "flake-classifier")
    with pytest.raises(ValueError, match="is a 'axis-regressor' model, not a 'flake-classifier'"):
        reg.resolve("lab_axis", "flake-classifier")


def test_config_names_models_and_switches_the_axis_model_off(tmp_path, lab_registry):
    path = tmp_path / "service.toml"
    path.write_text(f'[models]\naxis = "lab_axis"\nregistry = ["{lab_registry}"]\n')
    cfg = load_config(path)
    assert AxisModel.from_config(cfg.models).card.name == "lab_axis"
    path.write_text('[models]\naxis = ""\n')
    assert load_config(path).models.axis is None
    path.write_text('[models]\naxis = "m/axis.onnx"\n')
    assert load_config(path).models.axis == tmp_path / "m" / "axis.onnx"


def test_auto_backend_says_what_it_chose_and_why(tmp_path):
    backend = create_backend(default_classifier_path(), "auto")
    info = backend.describe()
    assert info["backend"] == "onnxruntime" and info["selected_by"] == "auto"
    if info["device"] == "cpu":  # this machine: no TensorRT, no CUDA provider
        assert any(p.startswith("tensorrt:") for p in info["passed_over"])
        assert any(p.startswith("onnxruntime/cuda:") for p in info["passed_over"])
    explicit = create_backend(default_classifier_path(), "onnxruntime", "cpu").describe()
    assert explicit["selected_by"] == "config" and "passed_over" not in explicit
    with pytest.raises(BackendUnavailable, match="expected 'auto', 'onnxruntime' or 'tensorrt'"):
        create_backend(default_classifier_path(), "openvino")


def test_engine_cache_reuses_rebuilds_a_broken_engine_and_keys_on_everything(tmp_path):
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"ENGINE v1"

    def deserialize(blob: bytes):
        return blob.decode() if blob.startswith(b"ENGINE") else None

    cache = EngineCache(tmp_path / "engines")
    key = engine_key("ab" * 32, "10.3.0", "RTX A2000", "8.6", 32)
    assert cache.load_or_build("cnn4", key, build, deserialize) == ("ENGINE v1", "built")
    assert cache.load_or_build("cnn4", key, build, deserialize) == ("ENGINE v1", "cached")
    assert len(builds) == 1
    cache.path_for("cnn4", key).write_bytes(b"\x00truncated")  # a driver update, a bad disk
    assert cache.load_or_build("cnn4", key, build, deserialize) == ("ENGINE v1", "rebuilt")
    assert len(builds) == 2 and cache.path_for("cnn4", key).read_bytes() == b"ENGINE v1"
    others = {
        engine_key("cd" * 32, "10.3.0", "RTX A2000", "8.6", 32),
        engine_key("ab" * 32, "10.4.0", "RTX A2000", "8.6", 32),
        engine_key("ab" * 32, "10.3.0", "L4", "8.9", 32),
        engine_key("ab" * 32, "10.3.0", "RTX A2000", "8.6", 8),
    }
    assert key not in others and len(others) == 4


def test_the_pipeline_records_the_cnn_and_the_edge_axis_of_every_hit(lab_registry):
    classifier = FlakeClassifier.from_config(ModelsConfig(backend="onnxruntime"))
    axis = AxisModel.from_config(ModelsConfig(axis="lab_axis", registry=[lab_registry]))
    chip = generate_chip(ChipSpec(width_um=3000, height_um=3000, thin_flakes_per_mm2=12), 5)
    renderer = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=5)
    pipe = TilePipeline(PreselectionConfig(), classifier, axis_model=axis)  # default: cnn
    frames = [frame_at(renderer, x, y, k) for k, (x, y) in enumerate(TILES)]
    hits = [h for f in frames for h in pipe.process(f).hits]
    inner = [h for h in hits if not h.touches_border]
    assert inner, "no whole flake in four tiles"
    for h in inner:
        assert h.axis_source == "cnn" and h.axis_angle_deg == h.axis_cnn_deg
        assert 0 <= h.axis_cnn_deg < 30 and 0 <= h.axis_cnn_confidence <= 1
        assert h.axis_edges_deg is None or 0 <= h.axis_edges_deg < 30
    for h in hits:
        if h.touches_border:  # the CNN never sees a cut crystal: the edges speak for it
            assert h.axis_cnn_deg is None and h.axis_source in ("edges", None)
            assert h.axis_angle_deg == h.axis_edges_deg
    # The straight edges first, the CNN where they give no answer; both kept.
    pipe = TilePipeline(PreselectionConfig(), classifier, axis_model=axis, axis_primary="edges")
    again = [h for f in frames for h in pipe.process(f).hits]
    assert [h.axis_cnn_deg for h in again] == [h.axis_cnn_deg for h in hits]
    for h in again:
        expected = h.axis_edges_deg if h.axis_edges_deg is not None else h.axis_cnn_deg
        assert h.axis_angle_deg == expected
        assert h.axis_source == (
            "edges"
            if h.axis_edges_deg is not None
            else "cnn"
            if h.axis_cnn_deg is not None
            else None
        )
    with pytest.raises(ValueError, match="modulus"):
        TilePipeline(PreselectionConfig(), classifier, axis_modulus_deg=60.0, axis_model=axis)


def test_a_registry_copy_with_a_stale_card_is_refused(tmp_path):
    shutil.copy(default_classifier_path(), tmp_path / "cnn.onnx")
    shutil.copy(default_classifier_path().with_suffix(".json"), tmp_path / "cnn.json")
    with open(tmp_path / "cnn.onnx", "ab") as f:
        f.write(b"\0")
    reg = ModelRegistry([tmp_path])
    assert "cnn" not in {e.name for e in reg.entries()}
    with pytest.raises(ValueError, match="sha256 differs"):
        reg.resolve("cnn", "flake-classifier")
