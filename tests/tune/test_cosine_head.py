"""The cosine head (artifacts/heads.py): its probabilities, the CosFace loss, save/load, training."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from artifacts import heads  # noqa: E402
from tune.models import build_model  # noqa: E402


def test_the_head_is_a_scaled_cosine_softmax():
    layer = heads.CosineSoftmax(3, scale=10.0)
    x = np.array([[1.0, 0.0], [0.0, 5.0]], np.float32)
    p = np.asarray(layer(x))
    w = np.asarray(layer.kernel)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    want = np.exp(10 * cos) / np.exp(10 * cos).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, want, rtol=1e-5)
    # Only the direction of the embedding counts: the geometry search uses.
    np.testing.assert_allclose(np.asarray(layer(x * 7.0)), p, rtol=1e-5)


def test_the_margin_loss_is_cosface():
    scale, margin = 16.0, 0.3
    cos = np.array([[0.9, 0.1, -0.2], [0.2, 0.5, 0.4]], np.float32)
    y = np.array([0, 2])
    p = np.exp(scale * cos) / np.exp(scale * cos).sum(axis=1, keepdims=True)
    got = np.asarray(heads.CosineMarginLoss(scale, margin)(y, p))
    logits = scale * (cos - margin * np.eye(3)[y])
    want = np.mean(-np.log(np.exp(logits[np.arange(2), y]) / np.exp(logits).sum(axis=1)))
    assert got == pytest.approx(want, rel=1e-4)
    # Without a margin it is the plain cross-entropy of the head's probabilities.
    plain = np.asarray(heads.CosineMarginLoss(scale, 0.0)(y, p))
    assert plain == pytest.approx(np.mean(-np.log(p[np.arange(2), y])), rel=1e-4)
    with pytest.raises(ValueError, match="scale"):
        heads.CosineSoftmax(3, scale=100.0)


def test_a_cosine_model_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("vitrine_cnn", num_classes=3, width=4, dense=16, head="cosine", head_margin=0.2)
    assert heads.objective(model) == {"head": "cosine", "loss": "cosface", "scale": 16.0, "margin": 0.2}
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 96)
    x = rng.normal(0.1, 0.05, (96, 28, 28, 1)).astype(np.float32)
    for c in range(3):  # one bright square per class, at its own place
        x[y == c, 4 + 8 * c:10 + 8 * c, 4:24] += 0.8
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=heads.loss_for(model), metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and history["accuracy"][-1] > 0.9
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, custom_objects=heads.CUSTOM_OBJECTS)
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-6)
    assert heads.objective(build_model("vitrine_cnn", num_classes=3)) == {"head": "softmax", "loss": "cross-entropy"}
    with pytest.raises(ValueError, match="head"):
        build_model("vitrine_cnn", num_classes=3, head="arcface")
