"""Property-based fuzzing of upload parsing (no Ray): for any body and Content-Type, the parsers
return what the ingress can use — non-empty keys that JSON can carry, at most ``limit`` images,
the files as sent when the body is well formed — or raise UploadError with a 4xx status. Any
other exception is a 500 from the ingress.

Budget: HYPOTHESIS_PROFILE (tests/conftest.py), ``ci`` by default; ``long`` in docs/RELIABILITY.md.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from serve import uploads
from serve.uploads import UploadError, image_from_body, images_from_body
from tests.helpers import encoded_images, mutated
from tests.helpers import multipart, multipart_files

BOUNDARY = "vitrine-test-boundary-7f3a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def parse_many(body: bytes, content_type: str, limit: int) -> list[tuple[str, bytes]] | None:
    """images_from_body's result, checked, or None for a client error; anything else fails."""
    try:
        images = images_from_body(body, content_type, limit=limit)
    except UploadError as exc:
        assert 400 <= exc.status < 500 and exc.reason, (exc.status, exc.reason)
        return None
    assert 1 <= len(images) <= limit
    keys = [key for key, _ in images]
    assert len(set(keys)) == len(keys)
    for key, data in images:
        assert isinstance(key, str) and key
        key.encode("utf-8")  # the key is echoed in a JSON response: a lone surrogate would be a 500
        assert isinstance(data, bytes)
    return images


def parse_one(body: bytes, content_type: str) -> bytes | None:
    try:
        data = image_from_body(body, content_type)
    except UploadError as exc:
        assert 400 <= exc.status < 500 and exc.reason, (exc.status, exc.reason)
        return None
    assert isinstance(data, bytes) and data
    return data


# The stdlib email parser that serve/uploads.py used until python-multipart replaced it crashes
# two ways, each a 500: it recurses once per "(" in a header parameter (324 nested ones give
# RecursionError, issue 11), and a parameter name ending in "*" with nothing after it (RFC 2231
# syntax, `multipart/form-data; 0*`, found by the long fuzz run) gives IndexError in
# email._header_value_parser.get_parameter. While that parser is there these tests must fail
# (strict xfail); after it, they must pass.
STDLIB_PARSER = hasattr(uploads, "BytesParser")


class ParserCrash(Exception):
    """A RecursionError or IndexError from the parsers, raised from one place: a RecursionError's
    own origin moves with the frame the limit is hit in (Hypothesis would call that flaky), and
    both are one bug for Hypothesis this way, not an exception group."""


stdlib_parser_crash = pytest.mark.xfail(STDLIB_PARSER, strict=True, raises=ParserCrash,
                                        reason="stdlib email parser: RecursionError on nested '(' and IndexError "
                                               "on a bare 'name*' parameter in a header")


def parse_both(body: bytes, content_type: str, limit: int) -> None:
    """Both parsers on one body, in a fresh thread: whether a deep header recurses past the limit
    depends on how deep the caller's stack already is, so a shrunk example would not replay."""
    outcome: dict = {}

    def parse():
        try:
            parse_many(body, content_type, limit)
            parse_one(body, content_type)
        except (RecursionError, IndexError) as exc:
            outcome["crash"] = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # an assertion or another bug: re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=parse)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if "crash" in outcome:  # raised here, without a __context__ (Hypothesis reads that too)
        raise ParserCrash(f"{outcome['crash']} on {content_type!r}, {body[:120]!r}...")


# ---------------------------------------------------------------- strategies
# File names as browsers and scripts send them: plain, unicode, with spaces, dots and dashes.
plain_names = st.text(st.characters(categories=["L", "N"], include_characters="-_. "), min_size=1, max_size=40) \
    .filter(lambda s: s.strip() == s and s.strip())
# Names that try the header's quoting: quotes, backslashes, semicolons, parens, percent, CR/LF.
hostile_names = st.text(st.sampled_from(list('"\\;()%=\r\n\t*\'') + ["a", "é", "😀", "\x00"]), min_size=1, max_size=40)
payloads = st.one_of(st.binary(max_size=300), encoded_images())
content_types = st.one_of(
    st.just(CONTENT_TYPE),
    st.sampled_from([
        "multipart/form-data", "multipart/form-data; boundary=", f"multipart/form-data; boundary=\"{BOUNDARY}\"",
        f"MULTIPART/FORM-DATA; BOUNDARY={BOUNDARY}", f"multipart/form-data; boundary={BOUNDARY}; charset=utf-8",
        "multipart/form-data; boundary=other", f"multipart/form-data; boundary={BOUNDARY}x",
        f"multipart/form-data; boundary={'b' * 5000}", "multipart/form-data; boundary=" + "(" * 500,
        "image/png", "", "application/octet-stream", f"multipart/mixed; boundary={BOUNDARY}",
    ]),
    # Starlette decodes header bytes as latin-1, so a header value never holds a code point past 255.
    st.text(st.characters(max_codepoint=255), max_size=80).map(lambda s: "multipart/form-data; " + s),
)


@st.composite
def raw_part(draw) -> bytes:
    """One part with hand-made headers: the header games a hostile client plays."""
    field = draw(st.sampled_from(["file", "file", "file", "other", "FILE", ""]))
    name = draw(st.one_of(plain_names, hostile_names))
    disposition = draw(st.sampled_from([
        f'form-data; name="{field}"; filename="{name}"',
        f"form-data; name={field}; filename={name}",
        f"form-data; name=\"{field}\"; filename*=UTF-8''{name}",
        f'form-data; name="{field}"',
        f'form-data; filename="{name}"',
        f'form-data; name="{field}"; filename="{name}"; name="other"',
        f'form-data; name="{field}"; filename="{name}" ' + "(" * draw(st.integers(1, 1000)),
        f'form-data; name="{field}"; filename=' + "(" * draw(st.integers(1, 1000)),
        f'form-data; name="{field}"; filename="{name}"; x=' + "(" * draw(st.integers(1, 1000)) + "x" + ")" * 3,
        "(" * draw(st.integers(1, 1000)) + f'form-data; name="{field}"; filename="{name}"',
        f'form-data; name="{field}" (comment (nested)); filename="{name}"',
        f'form-data; name="{field}"; filename="{name}"; x*',
        "form-data; " + "x" * draw(st.integers(1000, 100_000)),
        "",
    ]))
    headers = [f"Content-Disposition: {disposition}"]
    if draw(st.booleans()):
        headers.append(draw(st.sampled_from(["Content-Type: image/png", "Content-Type: ", "Content-Type: text/plain; (",
                                             "Content-Transfer-Encoding: base64",
                                             "Content-Transfer-Encoding: quoted-printable",
                                             "X-Long: " + "v" * 50_000, "Bad header line", ": empty name"])))
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n", "\r"]))
    head = eol.join(headers).encode("utf-8", "surrogatepass")
    return b"--" + BOUNDARY.encode() + eol.encode() + head + (eol * 2).encode() + draw(payloads) + b"\r\n"


@st.composite
def raw_bodies(draw) -> bytes:
    parts = draw(st.lists(raw_part(), min_size=0, max_size=8))
    if draw(st.integers(0, 9)) == 0:  # many parts: the per-part cost times thousands
        parts += [f"--{BOUNDARY}\r\n\r\n\r\n".encode()] * draw(st.integers(100, 3000))
    end = draw(st.sampled_from([f"--{BOUNDARY}--\r\n", f"--{BOUNDARY}--", f"--{BOUNDARY}", "", "--\r\n"]))
    return draw(st.sampled_from([b"", b"preamble\r\n"])) + b"".join(parts) + end.encode()


@st.composite
def well_formed(draw) -> list[tuple[str, bytes]]:
    """Files the conftest encoder writes correctly: unique plain names, data without the boundary."""
    names = draw(st.lists(plain_names, min_size=1, max_size=6, unique=True))
    files = [(n, draw(payloads)) for n in names]
    assume(all(BOUNDARY.encode() not in data for _, data in files))
    return files


# ---------------------------------------------------------------- properties
@given(well_formed(), st.integers(1, 10))
def test_a_well_formed_batch_comes_back_as_sent(files, limit):
    body, content_type = multipart_files(files)
    images = parse_many(body, content_type, limit)
    if len(files) > limit:
        assert images is None
    else:
        assert images == files


@given(plain_names, payloads)
def test_a_well_formed_single_upload_comes_back_as_sent(name, data):
    assume(data and BOUNDARY.encode() not in data)
    body, content_type = multipart("file", name, data)
    assert parse_one(body, content_type) == data


@given(mutated(well_formed().map(lambda files: multipart_files(files)[0])), content_types, st.integers(1, 300))
def test_a_damaged_multipart_body_is_parsed_or_refused_with_a_4xx(body, content_type, limit):
    parse_both(body, content_type, limit)


NESTED_PARENS = [
    'form-data; name="file"; filename=' + "(" * 400,
    'form-data; name="file"; filename="a.png"; x=' + "(" * 400,
    "(" * 400 + 'form-data; name="file"; filename="a.png"',
]
BARE_STAR = ['form-data; name="file"; x*', 'form-data; name="file"; filename="\";\x00*\r"']


@stdlib_parser_crash
@pytest.mark.parametrize("disposition", NESTED_PARENS + BARE_STAR,
                         ids=["parens-filename", "parens-extra-param", "parens-leading", "star-param", "star-filename"])
def test_hostile_content_disposition_minimal_examples_are_parsed_or_a_4xx(disposition):
    body = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    parse_both(body, CONTENT_TYPE, 10)


@stdlib_parser_crash
@pytest.mark.parametrize("content_type", ["multipart/form-data; 0*", f"multipart/form-data; boundary={BOUNDARY}; x*"])
def test_a_bare_star_parameter_in_the_content_type_is_a_4xx(content_type):
    body, _ = multipart("file", "a.png", b"x")
    parse_both(body, content_type, 10)
    parse_both(b"", content_type, 10)


@stdlib_parser_crash
@given(raw_bodies(), content_types, st.integers(1, 300))
@example(f'--{BOUNDARY}\r\nContent-Disposition: {NESTED_PARENS[0]}\r\n\r\n'
         f"x\r\n--{BOUNDARY}--\r\n".encode(), CONTENT_TYPE, 10)
@example(f"--{BOUNDARY}\r\n\r\n\r\n".encode() * 3000 + f"--{BOUNDARY}--\r\n".encode(), CONTENT_TYPE, 256)
@example(b"", CONTENT_TYPE, 1)
def test_hostile_multipart_headers_are_parsed_or_refused_with_a_4xx(body, content_type, limit):
    parse_both(body, content_type, limit)


@given(st.lists(st.tuples(st.one_of(plain_names, hostile_names), payloads), min_size=1, max_size=6),
       st.sampled_from(["file", "other"]), st.integers(1, 10))
def test_any_file_name_is_a_usable_key_or_a_4xx(files, field, limit):
    body, content_type = multipart_files(files, field=field)
    parse_both(body, content_type, limit)


@given(st.binary(max_size=2000), content_types)
def test_arbitrary_bytes_are_parsed_or_refused_with_a_4xx(body, content_type):
    parse_both(body, content_type, 256)


@pytest.mark.parametrize("n", [257, 1000])
def test_more_parts_than_the_limit_are_a_413(n):
    body, content_type = multipart_files([(f"item-{i}", b"x") for i in range(n)])
    with pytest.raises(UploadError) as exc:
        images_from_body(body, content_type, limit=256)
    assert exc.value.status == 413
