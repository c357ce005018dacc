"""The chat page at GET /, in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): a question with a photo and a follow-up give the API's answers, the page is
usable without a mouse or eyes (every control named, one live region), loads nothing from
elsewhere, and asks for the key where the server needs one. A screenshot is saved
($MMEDGE_SCREENSHOT_DIR, else the test's tmp folder).

Skipped where Chromium or its driver is missing, unless MMEDGE_EXPECT_BROWSER=1 (CI sets it after
scripts/browser.sh installed them): then that is a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import openai
import pytest

from _serving import data_url, scene_png, serving

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        message = "Chromium or chromedriver is missing: apt-get install chromium chromium-driver"
        if os.environ.get("MMEDGE_EXPECT_BROWSER") == "1":
            pytest.fail(message + " (MMEDGE_EXPECT_BROWSER=1)")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def _wait(driver, element_id: str, state: str, timeout: float = 120):
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, element_id).get_attribute("data-state") in (state, "error"))
    element = driver.find_element(By.ID, element_id)
    assert element.get_attribute("data-state") == state, driver.find_element(By.ID, "error").text
    return element


def _ask(driver, question: str, photo: Path | None = None) -> str:
    if photo is not None:
        driver.find_element(By.ID, "photo").send_keys(str(photo))
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "attachment").is_displayed())
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "answer").get_attribute("data-state")
                                    in ("waiting", "streaming", "done", "error"))
    return _wait(driver, "answer", "done").get_attribute("textContent")


def test_a_question_with_a_photo_and_a_follow_up_give_the_apis_answers(browser, server, tmp_path):
    png = scene_png(0)
    photo = tmp_path / "scene.png"
    photo.write_bytes(png)
    browser.get(server.url + "/")
    _wait(browser, "model", "ready", 30)
    max_tokens = int(browser.find_element(By.ID, "composer").get_attribute("data-max-tokens"))

    first = _ask(browser, "What color is the star?", photo)
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    turn1 = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png)}},
                                         {"type": "text", "text": "What color is the star?"}]}
    expected = api.chat.completions.create(model="tiny-vlm", messages=[turn1], max_tokens=max_tokens)
    assert first.strip() and first == expected.choices[0].message.content

    second = _ask(browser, "Where is the star?")
    history = [turn1, {"role": "assistant", "content": first},
               {"role": "user", "content": "Where is the star?"}]
    assert second == api.chat.completions.create(model="tiny-vlm", messages=history,
                                                 max_tokens=max_tokens).choices[0].message.content

    folder = Path(os.environ.get("MMEDGE_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(folder / "mmedge-page.png"))

    # Nothing loaded from elsewhere: devices are often offline.
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.url) or u.startswith("data:") for u in urls), urls


def test_every_control_has_a_name_and_the_answer_is_a_live_region(browser, server):
    browser.get(server.url + "/")
    _wait(browser, "model", "ready", 30)
    unnamed = browser.execute_script("""
        return [...document.querySelectorAll('input, select, textarea, button')].filter(e => {
          const label = e.id && document.querySelector(`label[for="${e.id}"]`);
          return !(e.getAttribute('aria-label') || (label && label.textContent.trim())
                   || e.closest('label') || e.textContent.trim());
        }).map(e => e.outerHTML);""")
    assert unnamed == []
    live = browser.find_elements(By.CSS_SELECTOR, "[aria-live]")
    assert [e.get_attribute("id") for e in live] == ["answer"]
    assert browser.find_element(By.ID, "error").get_attribute("role") == "alert"


def test_the_page_asks_for_the_key_where_the_server_needs_one(browser, loaded):
    with serving(loaded, api_key="k") as server:
        browser.get(server.url + "/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(server.url + "/")
        _wait(browser, "model", "key-needed", 30)
        browser.find_element(By.ID, "api-key").send_keys("k")
        browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        model = _wait(browser, "model", "ready", 30)
        assert "tiny-vlm" in model.text
