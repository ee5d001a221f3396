"""The web page at GET / in a real browser: Debian's Chromium, headless, driven by Playwright,
against the app running on local Ray.

    apt-get install -y chromium          # once; the test fails without it
    pytest tests/serve/test_web_page.py  # VITRINE_SKIP_BROWSER=1 skips it instead

``make screenshot`` runs the screenshot test against the service ``make run`` started
(``VITRINE_PAGE_URL``) and keeps the desktop picture in ``VITRINE_SCREENSHOT_DIR`` (the README's).
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import http, multipart

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("VITRINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # a search on two shared cores, the first one loading the model
SCREENSHOT_DIR = Path(os.environ.get("VITRINE_SCREENSHOT_DIR", "/tmp"))


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Session-scoped so that it runs before Ray is started: a missing browser fails in a second."""
    if os.environ.get("VITRINE_SKIP_BROWSER") == "1":
        pytest.skip("VITRINE_SKIP_BROWSER=1")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `apt-get install -y chromium` "
                    "(or set VITRINE_SKIP_BROWSER=1 to skip the browser tests)", pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(request):
    """A running service (``VITRINE_PAGE_URL``), or the test app over the test store."""
    url = os.environ.get("VITRINE_PAGE_URL", "").rstrip("/")
    return url or request.getfixturevalue("deploy_app")(request.getfixturevalue("serving_store"))


@pytest.fixture
def page(browser, app_url):
    """The page, loaded with /v1/info and the samples shown; fails the test on any uncaught JS error."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(app_url + "/")
    expect(pg.locator("#samples .sample").first).to_be_visible()
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def catalogue_png(app_url, tmp_path_factory):
    """One catalogue item (the first sample) and its PNG written to a file to upload."""
    item = http(app_url + "/v1/samples").json()["samples"][0]
    r = http(app_url + item["image_url"])
    assert r.status == 200 and r.body.startswith(b"\x89PNG"), r.body[:200]
    path = tmp_path_factory.mktemp("upload") / f"{item['item_id']}.png"
    path.write_bytes(r.body)
    return item, path


ALL_IMAGES_LOADED = "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"


def card_ids(pg) -> list[str]:
    return pg.locator("#results > .result").evaluate_all("cards => cards.map(c => c.dataset.itemId)")


def test_page_loads_and_shows_the_served_index(page, app_url):
    from playwright.sync_api import expect

    info = http(app_url + "/v1/info").json()
    assert page.title() == "vitrine — visual search"
    expect(page.locator("#info")).to_contain_text(f"{info['items']} items")
    assert info["items"] == 600
    expect(page.locator("#info")).to_contain_text(info["model_id"])
    expect(page.locator("#info")).to_contain_text(info["index_id"])
    options = page.locator("#category option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["auto", "all", *info["categories"]]
    assert page.locator("#category").input_value() == "auto"
    assert page.locator("#k").input_value() == str(info["default_k"])
    assert all(1 <= int(k) <= info["max_k"] for k in page.locator("#k option").all_inner_texts())
    samples = http(app_url + "/v1/samples?per_category=2").json()["samples"]
    assert page.locator("#samples > .sample").count() == len(samples) > 0
    # nothing searched yet: no results, no error, not busy
    assert page.locator("#results > .result").count() == 0
    assert page.locator("#error").is_hidden() and page.locator("#busy").is_hidden()
    # every control is labelled, every thumbnail has alt text
    assert page.evaluate("[...document.querySelectorAll('input, select')].every(e => e.labels.length > 0)")
    assert page.evaluate("[...document.querySelectorAll('img[src]')].every(i => i.alt.trim() !== '')")


def test_uploaded_catalogue_image_finds_itself_first(page, app_url, catalogue_png):
    from playwright.sync_api import expect

    item, path = catalogue_png
    page.select_option("#category", "all")
    page.select_option("#k", "10")
    page.set_input_files("#file", str(path))
    results = page.locator("#results > .result")
    expect(results).to_have_count(10)
    assert card_ids(page)[0] == item["item_id"]
    # the page shows what the API answers for the same image and settings, in the same order
    api = http(app_url + "/v1/search?k=10&category=all", path.read_bytes(), headers={"Content-Type": "image/png"})
    assert api.status == 200, api.body
    out = api.json()
    assert card_ids(page) == [h["item_id"] for h in out["results"]]
    expect(page.locator("#predicted")).to_have_text(out["predicted"])
    assert page.locator("#predicted").inner_text().strip()
    similarities = results.locator(".similarity").all_inner_texts()
    assert all(s.endswith("%") for s in similarities)
    assert similarities[0] == f"{out['results'][0]['similarity']:.1f}%"
    first = results.first
    assert first.locator(".category").inner_text() == item["category"]
    assert first.locator(".item-id").inner_text() == item["item_id"]
    # the thumbnails load from image_url, upscaled without smoothing
    img = first.locator("img")
    assert img.get_attribute("src") == item["image_url"]
    expect(img).to_have_js_property("complete", True)
    assert img.evaluate("i => i.naturalWidth") == 28
    assert img.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    # predicted classes as bars with percentages, the query image previewed
    bars = page.locator("#classes > li")
    assert 3 <= bars.count() <= 5 and all("%" in t for t in bars.all_inner_texts())
    expect(page.locator("#query")).to_have_js_property("naturalWidth", 28)
    assert page.locator("#error").is_hidden() and page.locator("#busy").is_hidden()


def test_clicking_a_sample_searches_with_it(page):
    from playwright.sync_api import expect

    sample = page.locator("#samples > .sample").nth(1)
    with page.expect_response(lambda r: "/v1/search" in r.url and r.request.method == "POST") as answer:
        sample.click()
    out = answer.value.json()
    assert answer.value.status == 200, out
    expect(page.locator("#results > .result")).to_have_count(out["k"])
    assert out["k"] == int(page.locator("#k").input_value())
    assert card_ids(page) == [h["item_id"] for h in out["results"]]
    expect(page.locator("#predicted")).to_have_text(out["predicted"])
    if out["category"] in (None, sample.get_attribute("data-category")):  # searched where it lives
        assert card_ids(page)[0] == sample.get_attribute("data-item-id")
    expect(page.locator("#query")).to_have_js_property("naturalWidth", 28)


def test_non_image_upload_shows_the_servers_reason_then_recovers(page, app_url, catalogue_png, tmp_path):
    from playwright.sync_api import expect

    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n")
    body, ctype = multipart("file", "notes.txt", text.read_bytes(), "text/plain")
    api = http(app_url + "/v1/search", body, headers={"Content-Type": ctype})
    assert api.status == 400
    reason = api.json()["error"]
    page.set_input_files("#file", str(text))
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(reason)
    assert page.locator("#results > .result").count() == 0
    expect(page.locator("#busy")).to_be_hidden()

    _, path = catalogue_png
    page.set_input_files("#file", str(path))
    expect(page.locator("#results > .result")).to_have_count(int(page.locator("#k").input_value()))
    expect(error).to_be_hidden()


def test_busy_while_searching_and_screenshots(page, browser, app_url, catalogue_png, tmp_path):
    from playwright.sync_api import expect

    _, path = catalogue_png
    held = []  # the search request, held back to see the page busy
    page.route("**/v1/search*", lambda route: held.append(route))
    page.set_input_files("#file", str(path))
    expect(page.locator("#busy")).to_be_visible()
    expect(page.locator("#main")).to_have_attribute("aria-busy", "true")
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#results > .result").first).to_be_visible()
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#main")).to_have_attribute("aria-busy", "false")
    page.wait_for_function(ALL_IMAGES_LOADED)
    shot = tmp_path / "vitrine-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0 and shot.read_bytes().startswith(b"\x89PNG")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT_DIR / "vitrine-page.png")

    # a phone-sized viewport: nothing wider than the screen
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    try:
        pg = phone.new_page()
        pg.goto(app_url + "/")
        expect(pg.locator("#samples > .sample").first).to_be_visible()
        pg.set_input_files("#file", str(path))
        expect(pg.locator("#results > .result").first).to_be_visible()
        pg.wait_for_function(ALL_IMAGES_LOADED)
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        mobile = tmp_path / "vitrine-page-phone.png"
        pg.screenshot(path=str(mobile), full_page=True)
        assert mobile.stat().st_size > 0
        shutil.copyfile(mobile, Path("/tmp/vitrine-page-phone.png"))  # for a look; the README shows the desktop one
    finally:
        phone.close()


def test_more_like_this_searches_from_a_result_without_uploading(page):
    from playwright.sync_api import expect

    with page.expect_response(lambda r: "/v1/search" in r.url and r.request.method == "POST"):
        page.locator("#samples > .sample").first.click()
    expect(page.locator("#lead")).to_have_text("Looks like")
    card = page.locator("#results > .result").nth(1)
    item_id = card.get_attribute("data-item-id")
    with page.expect_response(lambda r: f"/v1/items/{item_id}/similar" in r.url and r.request.method == "GET") as answer:
        card.locator("button.more").click()
    out = answer.value.json()
    assert answer.value.status == 200, out
    expect(page.locator("#lead")).to_have_text("More like")  # drawn with the results, in one go
    assert card_ids(page) == [h["item_id"] for h in out["results"]] and item_id not in card_ids(page)
    expect(page.locator("#predicted")).to_contain_text(item_id)
    expect(page.locator("#query")).to_have_js_property("naturalWidth", 28)  # the item's own image
    assert page.locator("#error").is_hidden()


def test_why_this_class_shows_the_heatmap_over_the_query_and_back(page, catalogue_png):
    from playwright.sync_api import expect

    _, path = catalogue_png
    page.set_input_files("#file", str(path))
    expect(page.locator("#results > .result").first).to_be_visible()
    query = page.locator("#query")
    preview = query.get_attribute("src")
    assert preview.startswith("blob:") and page.locator("#why-note").is_hidden()
    with page.expect_response(lambda r: "/v1/explain" in r.url and r.request.method == "POST") as answer:
        page.locator("#why").check()
    assert answer.value.status == 200, answer.value.text()
    expect(page.locator("#why-note")).to_be_visible()
    shown = answer.value.json()
    if shown["empty"]:  # the untrained test model's Grad-CAM may find nothing: the page asks for saliency
        expect(page.locator("#why-note")).to_contain_text("saliency")
    else:
        expect(page.locator("#why-note")).to_contain_text(f"where the model finds {shown['predicted']}")
    page.wait_for_function("document.querySelector('#query').src.startsWith('data:image/png;base64,')")
    expect(query).to_have_js_property("naturalWidth", 28)  # the overlay, at the upload's size
    page.locator("#why").uncheck()
    expect(page.locator("#why-note")).to_be_hidden()
    assert query.get_attribute("src") == preview
    assert page.locator("#error").is_hidden()
