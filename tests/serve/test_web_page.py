"""The search page in a real browser (Debian's Chromium driven by Playwright): query, see results, screenshot."""

import shutil
import subprocess

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import REPO
from served import CAPTIONS, Server, image_of, indices  # noqa: F401 - the index fixture


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        subprocess.run(["bash", str(REPO / "tests/browser/install.sh")], check=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(indices):
    server = Server(indices)
    yield server
    server.stop()


def test_text_search_shows_an_image_grid(browser, server, tmp_path):
    page = browser.new_page()
    page.goto(server.url)
    expect(page.locator("#index option")).to_have_count(3)
    page.select_option("#modality", "text")
    page.fill("#text", CAPTIONS[7])
    page.click("button[type=submit]")
    cards = page.locator(".result")
    expect(cards).to_have_count(26)
    expect(cards.first.locator(".caption")).to_have_text(CAPTIONS[7])
    expect(cards.first.locator(".similarity")).to_contain_text("similarity 1.0")
    expect(page.locator("#status")).to_contain_text("26 results")
    first_image = cards.first.locator("img")
    expect(first_image).to_have_attribute("src", "/images/demo/7.jpg")
    page.wait_for_function("document.querySelector('.result img').naturalWidth > 0")  # served from the shard
    page.screenshot(path=tmp_path / "search.png", full_page=True)
    assert (tmp_path / "search.png").stat().st_size > 10_000


def test_image_upload_search_and_errors_are_shown(browser, server, tmp_path):
    page = browser.new_page()
    page.goto(server.url)
    expect(page.locator("#index option")).to_have_count(3)
    (tmp_path / "query.jpg").write_bytes(image_of(11))
    page.set_input_files("#image", str(tmp_path / "query.jpg"))
    page.click("button[type=submit]")
    expect(page.locator(".result").first.locator(".caption")).to_have_text(CAPTIONS[11])

    (tmp_path / "not-an-image.jpg").write_bytes(b"<html>nope</html>")
    page.set_input_files("#image", str(tmp_path / "not-an-image.jpg"))
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_contain_text("image: not a decodable image")
    expect(page.locator(".result")).to_have_count(0)
