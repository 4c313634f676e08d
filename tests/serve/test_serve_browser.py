"""`tiue serve`'s web page in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium; nothing downloads a browser). Skips when no Chromium is installed: .ci/run
installs it, so CI runs it.

TIUE_SERVE_SCREENSHOT=path saves the page after the images arrive (docs/images/serve-page.png is one).
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request

import numpy as np
import pytest
from PIL import Image

PAGE_SECONDS = 120


def _executable(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extra)")
    binary = _executable("chromium", "chromium-browser")
    driver_path = _executable("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver) to run the browser test")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,800"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def _open_page(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    wait = WebDriverWait(browser, PAGE_SECONDS)
    prompt = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
    return wait, prompt


def _set_number(browser, selector: str, value: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def test_the_page_generates_tiue_samples_image(browser, server, sample_reference, tmp_path):
    from selenium.webdriver.common.by import By

    wait, prompt = _open_page(browser, server)
    prompt.send_keys("a red circle")
    _set_number(browser, "#seed input", 21)
    _set_number(browser, "#count input[type=number]", 4)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    status = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#status").text.strip() or None)
    assert status.startswith("4 images (seed 21..24, K = 4) in "), status
    images = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#images img[src]"))
    assert len(images) == 4
    served = []
    for image in images:
        with urllib.request.urlopen(image.get_attribute("src"), timeout=30) as response:
            served.append(np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")))
    # `tiue sample --prompt P` four times with --seed 21: one batch of 4 there as in the server's
    # pass, with as many threads, so the same computation and the same pixels.
    for got, path in zip(served, sample_reference(["a red circle"] * 4, 21)):
        assert np.array_equal(got, np.asarray(Image.open(path).convert("RGB"))), path.name
    browser.save_screenshot(os.environ.get("TIUE_SERVE_SCREENSHOT") or str(tmp_path / "page.png"))


def test_the_page_shows_why_it_refuses_an_empty_prompt(browser, server):
    from selenium.webdriver.common.by import By

    wait, prompt = _open_page(browser, server)
    prompt.clear()
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    status = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#status").text.strip() or None)
    assert status.startswith("Error: prompt: empty"), status
    assert browser.find_elements(By.CSS_SELECTOR, "#images img") == []
