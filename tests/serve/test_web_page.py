"""The search page in a real browser (Debian's Chromium driven by Playwright): query, see results, page
through them, and a screenshot inspected for broken images."""

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from served import CAPTIONS, Server, browser, image_of, indices  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def server(indices, image_server):
    server = Server(indices, "--allow-private-urls")  # the image-URL query fetches from 127.0.0.1
    yield server
    server.stop()


def open_page(browser, server, query="", height=900):
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.goto(server.url + query)
    expect(page.locator("#index option")).to_have_count(3)
    return page


def text_search(page, text, index="demo"):
    page.select_option("#index", index)
    page.select_option("#modality", "text")
    page.uncheck("#deduplicate")
    page.fill("#text", text)
    page.click("button[type=submit]")


def assert_no_broken_images(page, path):
    """Every image on the page loaded, and the screenshot shows a picture (the test images are noise
    textures) wherever an image is, and the plain 'image unavailable' note elsewhere."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function("[...document.images].every((i) => i.complete)")  # decoded, on a loaded machine too
    assert page.evaluate("[...document.images].filter((i) => i.naturalWidth === 0).length") == 0
    page.screenshot(path=path, full_page=True)
    shot = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    pictures = page.locator(".result .picture")
    for i in range(pictures.count()):
        box = pictures.nth(i).bounding_box()
        region = shot[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
        if pictures.nth(i).locator("img").count():
            assert region.std() > 8, f"result {i} shows no picture"
        else:
            expect(pictures.nth(i)).to_have_text("image unavailable")


def test_text_search_shows_an_image_grid(browser, server, tmp_path):
    page = open_page(browser, server)
    text_search(page, CAPTIONS[7])
    cards = page.locator(".result")
    expect(cards).to_have_count(26)
    expect(cards.first.locator(".caption")).to_have_text(CAPTIONS[7])
    expect(cards.first.locator(".similarity")).to_contain_text("similarity 1.0")
    expect(page.locator("#status")).to_contain_text("showing 26 of 26 results")
    # Each card links to its image (served from the shard) and to the original URL.
    expect(cards.first.locator("a.picture")).to_have_attribute("href", f"{server.url}/images/demo/7.jpg")
    expect(cards.first.locator(".links a")).to_have_attribute("href", "http://x/000000000007.jpg")
    assert_no_broken_images(page, tmp_path / "search.png")
    assert page.request.get(f"{server.url}/images/demo/7.jpg").body() == image_of(7)


def test_paging_past_the_first_page(browser, server):
    """Ten at a time here (?page=10; 40 by default): the rest come through /metadata as the page scrolls."""
    page = open_page(browser, server, "/?page=10", height=400)  # the button starts below the fold
    text_search(page, CAPTIONS[3])
    cards = page.locator(".result")
    expect(cards).to_have_count(10)
    expect(page.locator("#status")).to_contain_text("showing 10 of 26 results")
    # Scrolling the button into view loads the next page; the page grows, so it leaves the view until the next scroll.
    # (Not .click(): clicking scrolls it into view too, so the observer and the click race for the last page.)
    page.locator("#more").scroll_into_view_if_needed()
    expect(cards).to_have_count(20)
    page.locator("#more").scroll_into_view_if_needed()
    expect(cards).to_have_count(26)
    expect(page.locator("#more")).to_be_hidden()
    captions = cards.locator(".caption").all_inner_texts()
    assert len(set(captions)) == 26 and captions[0] == CAPTIONS[3]


def test_dead_original_urls_show_a_note_not_a_broken_image(browser, server, tmp_path):
    """The 'bare' index has no shards and its original URLs do not resolve: no broken image is shown."""
    page = open_page(browser, server)
    text_search(page, CAPTIONS[2], index="bare")
    expect(page.locator(".result")).to_have_count(26)
    # Each note appears once the browser gives up on the URL's host; the resolver may be slow on a busy machine.
    expect(page.locator(".result .missing")).to_have_count(26, timeout=30_000)
    assert_no_broken_images(page, tmp_path / "bare.png")


def test_image_upload_url_and_errors_in_plain_words(browser, server, image_server, tmp_path):
    page = open_page(browser, server)
    (tmp_path / "query.jpg").write_bytes(image_of(11))
    page.set_input_files("#image", str(tmp_path / "query.jpg"))
    page.click("button[type=submit]")
    expect(page.locator(".result").first.locator(".caption")).to_have_text(CAPTIONS[11])

    (tmp_path / "not-an-image.jpg").write_bytes(b"<html>nope</html>")
    page.set_input_files("#image", str(tmp_path / "not-an-image.jpg"))
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_have_text("not an image this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    expect(page.locator(".result")).to_have_count(0)  # the stale results are gone

    page.fill("#image-url", f"{image_server}/good/3.jpg")
    page.click("button[type=submit]")
    expect(page.locator(".result")).not_to_have_count(0)
    page.fill("#image-url", "")
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_contain_text("Type a description")
    expect(page.locator(".result")).to_have_count(0)


def test_similar_images_from_a_result(browser, server):
    """'similar images' searches with that result's own image: it comes first."""
    page = open_page(browser, server)
    text_search(page, CAPTIONS[5])
    chosen = page.locator(".result").nth(4)
    href = chosen.locator("a.picture").get_attribute("href")
    chosen.locator("button", has_text="similar images").click()
    expect(page.locator(".result").first.locator(".similarity")).to_contain_text("similarity 1.0")
    expect(page.locator(".result").first.locator("a.picture")).to_have_attribute("href", href)


def test_a_text_search_is_a_link(browser, server):
    """?q= (with modality and index) searches at load, and a text search writes them into the address."""
    page = open_page(browser, server)
    text_search(page, CAPTIONS[5], index="bare")
    expect(page.locator(".result").first.locator(".caption")).to_have_text(CAPTIONS[5])
    linked = browser.new_page()
    linked.goto(page.url)
    assert "q=" in page.url and "index=bare" in page.url and "modality=text" in page.url
    expect(linked.locator("#text")).to_have_value(CAPTIONS[5])
    expect(linked.locator("#index")).to_have_value("bare")
    expect(linked.locator(".result").first.locator(".caption")).to_have_text(CAPTIONS[5])
