"""Evaluation metrics with no framework behind them: multi-label P/R/F1 and angle errors.

numpy only, so a model can be judged on a machine without torch, as it is served.

Multi-label scores: one column per class, a crop is positive for class c when its score is
>= the threshold. F1 is the harmonic mean 2PR / (P + R), and 0 when P + R = 0; precision is
0 when nothing is predicted positive (there is then no true positive either, so F1 is 0
whatever precision is called). Angles are circular: an error is the shortest way round the
circle of circumference `modulus` (29 deg vs 1 deg is 2 deg apart mod 30).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flakescan.inference.axis_model import circular_difference

__all__ = [
    "DEFAULT_THRESHOLDS",
    "angle_errors",
    "angle_summary",
    "best_thresholds",
    "classification_report",
    "f1_from_pr",
    "per_class_at",
    "threshold_sweep",
]

DEFAULT_THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)


def f1_from_pr(precision: np.ndarray | float, recall: np.ndarray | float) -> np.ndarray:
    """2PR / (P + R), 0 where P + R = 0 (elementwise)."""
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    s = p + r
    return np.where(s > 0, 2.0 * p * r / np.where(s > 0, s, 1.0), 0.0)


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(bool), s


def _counts(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, fn of shape (T, C) for thresholds (T,) or (T, C)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 1:
        t = np.repeat(t[:, None], y.shape[1], axis=1)
    pred = s[None, :, :] >= t[:, None, :]  # (T, n, C)
    tp = (pred & y[None]).sum(axis=1)
    fp = (pred & ~y[None]).sum(axis=1)
    fn = (~pred & y[None]).sum(axis=1)
    return tp, fp, fn


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    return precision, recall, f1_from_pr(precision, recall)


def per_class_at(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float | Sequence[float],
    classes: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Per class: precision, recall, f1, support, tp, fp, fn at one threshold (or one per
    class)."""
    y, s = _check(y_true, scores)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (y.shape[1],))[None, :]
    tp, fp, fn = _counts(y, s, t)
    p, r, f = _prf(tp, fp, fn)
    names = list(classes) if classes is not None else [str(c) for c in range(y.shape[1])]
    return {
        name: {
            "threshold": float(t[0, c]),
            "precision": float(p[0, c]),
            "recall": float(r[0, c]),
            "f1": float(f[0, c]),
            "support": int(y[:, c].sum()),
            "tp": int(tp[0, c]),
            "fp": int(fp[0, c]),
            "fn": int(fn[0, c]),
        }
        for c, name in enumerate(names)
    }


def threshold_sweep(
    y_true: np.ndarray, scores: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class at every threshold: arrays (T, C)."""
    y, s = _check(y_true, scores)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError("thresholds must be a non-empty 1-d sequence")
    tp, fp, fn = _counts(y, s, t)
    p, r, f = _prf(tp, fp, fn)
    return {"thresholds": t, "precision": p, "recall": r, "f1": f}


def best_thresholds(sweep: dict[str, np.ndarray]) -> np.ndarray:
    """Per class, the threshold of highest F1; among ties the middle of the tied ones, so a
    flat optimum does not pick its edge."""
    f1, t = sweep["f1"], sweep["thresholds"]
    best = np.empty(f1.shape[1])
    for c in range(f1.shape[1]):
        ties = np.flatnonzero(np.isclose(f1[:, c], f1[:, c].max(), rtol=0, atol=1e-12))
        best[c] = t[ties[len(ties) // 2]]
    return best


def classification_report(
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict:
    """Everything the evaluation reports about a multi-label classifier."""
    sweep = threshold_sweep(y_true, scores, thresholds)
    best = best_thresholds(sweep)
    return {
        "threshold": float(threshold),
        "at_threshold": per_class_at(y_true, scores, threshold, classes),
        "at_best_threshold": per_class_at(y_true, scores, best, classes),
        "sweep": {
            "thresholds": sweep["thresholds"].round(4).tolist(),
            **{
                key: {c: sweep[key][:, k].round(5).tolist() for k, c in enumerate(classes)}
                for key in ("precision", "recall", "f1")
            },
        },
    }


def angle_errors(
    predicted: Sequence[float | None] | np.ndarray,
    true: Sequence[float] | np.ndarray,
    modulus: float = 30.0,
) -> np.ndarray:
    """Signed circular errors predicted - true in [-modulus/2, modulus/2); NaN where there
    is no prediction (None or NaN)."""
    pred = np.array([np.nan if v is None else float(v) for v in predicted], dtype=np.float64)
    truth = np.asarray(true, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"{len(pred)} predictions for {len(truth)} true angles")
    out = np.full(pred.shape, np.nan)
    ok = np.isfinite(pred)
    out[ok] = circular_difference(pred[ok], truth[ok], modulus)
    return out


def angle_summary(errors: np.ndarray) -> dict:
    """MAE, RMS, median, max of |error|, share within 1 and 2 deg; NaN errors (no answer)
    are counted as failures and left out of the statistics."""
    e = np.asarray(errors, dtype=np.float64)
    ok = np.isfinite(e)
    a = np.abs(e[ok])
    out = {"n": int(e.size), "answered": int(ok.sum()), "failed": int((~ok).sum())}
    if a.size == 0:
        return {
            **out,
            **dict.fromkeys(("mae", "rms", "median", "max", "within_1", "within_2", "bias")),
        }
    return {
        **out,
        "mae": float(a.mean()),
        "rms": float(np.sqrt(np.mean(a**2))),
        "median": float(np.median(a)),
        "max": float(a.max()),
        "within_1": float(np.mean(a <= 1.0)),
        "within_2": float(np.mean(a <= 2.0)),
        "bias": float(e[ok].mean()),
    }
