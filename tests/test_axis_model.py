"""The axis model's serving side: angle encoding, the square symmetries, crops, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest

from flakescan.inference.axis import estimate_axis
from flakescan.inference.axis_model import (
    AXIS_TASK,
    AxisModel,
    axis_crop,
    axis_input,
    circular_difference,
    decode_angle,
    dihedral_angle,
    dihedral_view,
    encode_angle,
)
from flakescan.inference.backends import InferenceBackend
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput


def _hexagon_image(theta_deg: float, n: int = 96, radius: float = 30.0) -> np.ndarray:
    """(n, n, 3) linear image: a dark regular hexagon (edges every 60 deg, so its edge
    directions are theta mod 30 as well) on a bright wafer."""
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2
    inside = np.ones((n, n), bool)
    for j in range(6):
        a = np.deg2rad(theta_deg + 90.0 + 60.0 * j)  # edge normals, 90 deg from the edges
        inside &= x * np.cos(a) + y * np.sin(a) <= radius
    img = np.full((n, n, 3), 200.0)
    img[inside] *= [0.9, 0.92, 1.0]
    return img


def _edge_angle(img: np.ndarray, modulus: float = 30.0) -> float:
    """The straight-edge estimate of #2 on a (n, n, 3) image of one dark crystal."""
    signal = 1.0 - img[..., 0] / np.median(img[..., 0])
    est = estimate_axis(signal, signal > 0.05, modulus_deg=modulus)
    assert est is not None
    return est.angle_deg


def test_encoding_round_trips_and_is_continuous_across_the_wrap():
    theta = np.array([0.0, 0.1, 14.9, 29.9, 30.0, 45.0, -3.0])
    back, length = decode_angle(encode_angle(theta, 30.0), 30.0)
    assert np.allclose(circular_difference(back, theta), 0.0, atol=1e-6)
    assert np.allclose(length, 1.0)
    # 29.9 and 0.1 deg are 0.2 deg apart on the circle, and their targets are close too.
    a, b = encode_angle([29.9, 0.1], 30.0)
    assert np.linalg.norm(a - b) < 0.05
    assert circular_difference(29.9, 0.1) == pytest.approx(-0.2)


@pytest.mark.parametrize("theta", [3.0, 11.0, 22.5])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_angle_says_where_the_axis_goes(theta, k, flip):
    img = _hexagon_image(theta)
    assert circular_difference(_edge_angle(img), theta) == pytest.approx(0.0, abs=0.5)
    view = dihedral_view(img, k, flip, axes=(0, 1))
    expected = dihedral_angle(theta, k, flip, 30.0)
    assert circular_difference(_edge_angle(view), expected) == pytest.approx(0.0, abs=0.5)


def test_axis_input_removes_exposure_and_white_balance():
    img = _hexagon_image(7.0)
    a = axis_input(img)
    b = axis_input(img * [0.3, 0.5, 1.7])  # another exposure and white balance
    assert a.shape == (1, 3, 96, 96)
    assert np.allclose(a, b, atol=1e-5)
    assert np.median(a[0, 0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        axis_input(np.zeros((4, 32, 32)))


def test_axis_crop_keeps_the_crystal_whole_or_refuses():
    img = _hexagon_image(7.0, n=200)
    crop = axis_crop(img, (70, 70, 130, 130), 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert circular_difference(_edge_angle(crop.astype(float)), 7.0) == pytest.approx(0, abs=1.0)
    assert axis_crop(img, (0, 0, 190, 190), 64) is None  # 1.5 x extent does not fit


class _EdgeBackend(InferenceBackend):
    """A real (non-learnt) angle estimator behind the backend interface: the edge
    histogram, answering in the network's encoding. AxisModel must map every view back."""

    name = "edges"
    device = "cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = []
        for x in batch:  # (3, H, W), axis_input: 0 on the wafer, negative on the crystal
            signal = -x[0]
            est = estimate_axis(signal, signal > 0.05, modulus_deg=30.0)
            out.append(encode_angle(est.angle_deg, 30.0))
        return np.asarray(out, np.float32)


def _card(modulus: float | None = 30.0) -> ModelCard:
    return ModelCard(
        name="edges",
        task=AXIS_TASK,
        architecture="edge histogram",
        parameters=0,
        input=ModelInput(name="input", shape=[None, 3, 96, 96], representation="axis_input"),
        output=ModelOutput(name="angle_vec", activation="none", modulus_deg=modulus),
        onnx_sha256="0" * 64,
    )


@pytest.mark.parametrize("theta", [1.0, 13.0, 28.5])
def test_axis_model_maps_all_eight_views_back(theta):
    img = _hexagon_image(theta)
    model = AxisModel(_EdgeBackend(), _card(), views=8)
    (pred,) = model.predict(img[None].astype(np.uint8))
    # Every view, mapped back, lands on what the estimator says of the original image
    # (itself within 1 deg of the truth on a pixelated hexagon).
    assert circular_difference(pred.angle_deg, _edge_angle(img)) == pytest.approx(0, abs=0.05)
    assert circular_difference(pred.angle_deg, theta) == pytest.approx(0.0, abs=1.0)
    assert pred.confidence > 0.99


def test_axis_model_sends_the_backend_bounded_batches_and_keeps_the_order():
    class Counting(_EdgeBackend):
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def run(self, batch):
            self.sizes.append(len(batch))
            return super().run(batch)

    thetas = [2.0, 9.0, 17.0, 24.0, 29.0]
    crops = np.stack([_hexagon_image(t) for t in thetas]).astype(np.uint8)
    backend = Counting()
    preds = AxisModel(backend, _card(), views=2, batch_size=2).predict(crops)
    assert backend.sizes == [4, 4, 2]  # 2 crops x 2 views, twice, then the last crop
    for pred, theta in zip(preds, thetas, strict=True):
        assert circular_difference(pred.angle_deg, theta) == pytest.approx(0.0, abs=1.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        AxisModel(_EdgeBackend(), _card(), batch_size=0)


def test_axis_model_refuses_cards_of_other_tasks_or_without_modulus():
    with pytest.raises(ValueError, match="modulus_deg"):
        AxisModel(_EdgeBackend(), _card(None))
    with pytest.raises(ValueError, match="not 'axis-regressor'"):
        AxisModel(_EdgeBackend(), _card().model_copy(update={"task": "flake-classifier"}))


def test_export_pins_versions_onnxruntime_reads_and_catches_a_different_model(tmp_path):
    torch = pytest.importorskip("torch", reason="export needs the train extra (torch)")
    import onnx

    from flakescan.training.export import ONNX_OPSET, export_onnx, onnxruntime_limits, verify_onnx

    max_ir, max_opset = onnxruntime_limits()
    assert max_ir >= 8 and max_opset >= ONNX_OPSET
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    net.append(torch.nn.Flatten()).append(torch.nn.Linear(4, 2))
    path = tmp_path / "m.onnx"
    versions = export_onnx(net, path, torch.zeros(1, 3, 16, 16), output_name="angle_vec")
    proto = onnx.load(str(path))
    assert proto.ir_version == versions["onnx_ir_version"] <= max_ir
    assert [o.version for o in proto.opset_import if o.domain == ""] == [ONNX_OPSET]
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    assert verify_onnx(net, path, x, output_name="angle_vec") < 1e-4
    with torch.no_grad():
        net[-1].bias += 1.0  # no longer the exported model
    with pytest.raises(RuntimeError, match="disagree"):
        verify_onnx(net, path, x, output_name="angle_vec")
