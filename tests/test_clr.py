"""SimCLR pre-training: the symmetric NT-Xent loss, and backbone weights the classifier loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flakescan.inference.model_card import file_sha256, load_model_card  # noqa: E402
from flakescan.training import clr, train_classifier  # noqa: E402
from flakescan.training.resnet import read_backbone  # noqa: E402


def _reference_nt_xent(z_i: np.ndarray, z_j: np.ndarray, t: float) -> float:
    """SimCLR eq. (1) averaged over all 2N anchors, written out with plain loops."""
    z = np.concatenate([z_i, z_j]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for a in range(n2):
        pos = a + n if a < n else a - n
        denom = sum(math.exp(z[a] @ z[k] / t) for k in range(n2) if k != a)
        total += -math.log(math.exp(z[a] @ z[pos] / t) / denom)
    return total / n2


def test_nt_xent_equals_the_written_out_reference() -> None:
    g = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.1, 0.5, 1.0):
        got = float(clr.nt_xent(z_i, z_j, t))
        assert got == pytest.approx(_reference_nt_xent(z_i.numpy(), z_j.numpy(), t), rel=1e-5)


def test_nt_xent_is_symmetric_and_not_the_one_directional_loss() -> None:
    g = torch.Generator().manual_seed(1)
    z_i, z_j = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * 3
    assert float(clr.nt_xent(z_i, z_j)) == pytest.approx(float(clr.nt_xent(z_j, z_i)), rel=1e-6)
    # The seed's loss used only anchors from the first view; ours averages both directions.
    z = torch.nn.functional.normalize(torch.cat([z_i, z_j]), dim=1)
    sim = (z @ z.T / 0.5).masked_fill(torch.eye(12, dtype=torch.bool), float("-inf"))
    one_way = torch.nn.functional.cross_entropy(sim[:6], torch.arange(6, 12))
    other_way = torch.nn.functional.cross_entropy(sim[6:], torch.arange(0, 6))
    assert float(one_way) != pytest.approx(float(other_way), rel=1e-3)
    assert float(clr.nt_xent(z_i, z_j)) == pytest.approx(float(one_way + other_way) / 2, rel=1e-6)


def test_nt_xent_is_low_for_matching_views_and_rejects_bad_input() -> None:
    z = torch.eye(4) * 10
    assert float(clr.nt_xent(z, z, 0.1)) < 1e-3
    with pytest.raises(ValueError, match="temperature"):
        clr.nt_xent(z, z, 0.0)
    with pytest.raises(ValueError, match="two"):
        clr.nt_xent(z, z[:3])


def _unlabelled_folder(root: Path, n: int = 16) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((32, 32, 3), (180, 150, 120), np.float32)
        r, c = rng.integers(4, 20, 2)
        img[r : r + 10, c : c + 10] *= 1 - (0.05 + 0.02 * (i % 10))
        img += rng.normal(0, 1.0, img.shape)
        suffix = ".tif" if i % 2 else ".png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"u{i:02d}{suffix}")
    return root


def _labelled_folder(root: Path, prefix: str, n: int = 8) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img = np.full((32, 32, 3), (180, 150, 120), np.float32)
        labels = [0, 0, 0, 0]
        if i % 4 < 3:
            img[10:22, 10:22] *= 1 - (0.08, 0.15, 0.25)[i % 4]
            labels[i % 4] = labels[3] = 1
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{prefix}{i}.png")
        (root / "labels" / f"{prefix}{i}.txt").write_text(" ".join(map(str, labels)))
    (root / "dataset.json").write_text(json.dumps({"crop_um": 50.0}))
    return root


def test_clr_writes_backbone_weights_the_classifier_loads_and_freezes(tmp_path: Path) -> None:
    out_dir = tmp_path / "clr"
    argv = ["--data-dir", str(_unlabelled_folder(tmp_path / "u")), "--input-px", "32"]
    argv += ["--epochs", "2", "--batch-size", "8", "--temperature", "0.2"]
    argv += ["--out-dir", str(out_dir), "--quiet"]
    assert clr.main(argv) == 0
    summary = json.loads((out_dir / "clr.json").read_text())
    assert summary["images"] == 16 and len(summary["loss_per_epoch"]) == 2
    full = torch.load(out_dir / "clr_full.pt", weights_only=True)
    assert any(k.startswith("head.") for k in full["state_dict"])  # projection head kept
    blob = read_backbone(out_dir / "clr_backbone.pt")
    assert blob["arch"] == "cnn4" and blob["out_features"] == 256
    assert all(k.startswith("features.") for k in blob["state_dict"])

    train_dir = _labelled_folder(tmp_path / "train", "t")
    val_dir = _labelled_folder(tmp_path / "val", "v")
    out = tmp_path / "le.onnx"
    argv = ["--data-dir", str(train_dir), "--val-dir", str(val_dir), "--input-px", "32"]
    argv += ["--backbone-weights", str(out_dir / "clr_backbone.pt"), "--freeze-backbone"]
    argv += ["--epochs", "1", "--batch-size", "4", "--threads", "1", "--out", str(out), "--quiet"]
    assert train_classifier.main(argv) == 0
    card = load_model_card(out)
    assert card.training["config"]["freeze_backbone"] is True
    assert card.input.crop_um == 50.0
    assert card.training["backbone_weights_sha256"] == file_sha256(out_dir / "clr_backbone.pt")
    assert card.training["backbone_pretraining"]["images"] == 16


def test_clr_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        clr.main(["--simulate-chips", "1", "--temperature", "0", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--temperature must be > 0, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        clr.main(["--data-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path)])
    assert "--data-dir folder not found" in capsys.readouterr().err
