"""Property-based fuzzing of preprocessing (no Ray, no model): whatever bytes arrive, the result
is a model input of the spec's shape, dtype and range, or an ImageDecodeError (the service's
400/413) — any other exception would be a 500.

Budget: HYPOTHESIS_PROFILE (tests/conftest.py), ``ci`` by default; ``long`` in docs/RELIABILITY.md.
"""

from __future__ import annotations


import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from artifacts.preprocess import (ImageDecodeError, PreprocessSpec, arrays_to_model_input, preprocess_bytes,
                                  preprocess_or_reason, to_model_input)
from tests.helpers import encoded_images, mutated

specs = st.builds(PreprocessSpec, height=st.sampled_from([28, 32, 7]), width=st.sampled_from([28, 32, 5]),
                  channels=st.sampled_from([1, 3]), invert_light_background=st.booleans())


def assert_model_input(x: np.ndarray, spec: PreprocessSpec) -> None:
    assert x.shape == spec.input_shape
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0 + 1e-6


def preprocess_or_client_error(data: bytes, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | None:
    """The result, or None for an ImageDecodeError with a reason; anything else propagates and fails."""
    try:
        x = preprocess_bytes(data, spec, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return None
    assert_model_input(x, spec)
    return x


@given(encoded_images(), specs)
def test_every_valid_image_becomes_a_model_input(data, spec):
    assert preprocess_or_client_error(data, spec, max_pixels=40_000_000) is not None


@given(mutated(encoded_images()), specs, st.sampled_from([40_000_000, 500]))
# A PNG whose IHDR claims 65535x65535 pixels with a tiny body: refused by size, never allocated.
@example(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\xff\xff\x00\x00\xff\xff\x08\x02\x00\x00\x00\x00\x00\x00\x00",
         PreprocessSpec(), 40_000_000)
@example(b"GIF89a\x00\x00\x00\x00\x00\x00\x00", PreprocessSpec(), 40_000_000)  # a 0x0 GIF
@example(b"\xff\xd8\xff", PreprocessSpec(), 40_000_000)  # a JPEG that stops after its marker
def test_a_damaged_image_is_a_model_input_or_a_decode_error(data, spec, max_pixels):
    preprocess_or_client_error(data, spec, max_pixels)


@given(st.binary(max_size=512), specs)
def test_arbitrary_bytes_are_a_model_input_or_a_decode_error(data, spec):
    preprocess_or_client_error(data, spec, 40_000_000)


@given(mutated(encoded_images()), specs)
def test_the_batch_path_gives_a_reason_where_the_single_path_raises(data, spec):
    """/v1/embed uses preprocess_or_reason: it must agree with preprocess_bytes, and its reason
    must never be the catch-all "cannot preprocess image" (that catch-all hides a bug)."""
    single = preprocess_or_client_error(data, spec, 40_000_000)
    x, reason = preprocess_or_reason(data, spec, max_pixels=40_000_000)
    assert (x is None) == (single is None)
    if x is None:
        assert reason and not reason.startswith("cannot preprocess image"), reason
    else:
        np.testing.assert_array_equal(x, single)


@given(st.sampled_from(["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV",
                        "I", "I;16", "I;16B", "F"]),
       st.integers(1, 40), st.integers(1, 40), st.integers(0, 255), specs)
def test_every_pillow_mode_becomes_a_model_input(mode, w, h, fill, spec):
    # 32-bit modes get values past 255, which _to_8bit must scale rather than clip.
    img = Image.new(mode, (w, h), {"F": float(fill) * 300.5, "I": fill * 300}.get(mode, fill))
    assert_model_input(to_model_input(img, spec), spec)


@given(st.integers(0, 4), st.sampled_from([(28, 28), (10, 40), (3, 3), (1, 1)]), st.sampled_from([None, 1, 3]),
       st.integers(0, 2**32 - 1), specs)
def test_arrays_to_model_input_gives_each_image_a_model_input(n, hw, c, seed, spec):
    shape = (n, *hw) if c is None else (n, *hw, c)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    out = arrays_to_model_input(pixels, spec)
    assert out.shape == (n, *spec.input_shape) and out.dtype == np.float32
    if n:
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


# Found by the fuzzer: _to_8bit sent 'La' to convert('RGBA'), which Pillow refuses ('La' only
# converts to 'LA'); no decoder yields 'La', so only an in-memory image reached it.
def test_a_premultiplied_la_image_becomes_a_model_input():
    assert_model_input(to_model_input(Image.new("La", (3, 3), 0), PreprocessSpec()), PreprocessSpec())
