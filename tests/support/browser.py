"""A real headless browser for the tests: Debian's Chromium driven through its WebDriver (selenium).

``open_page(path)`` loads a local HTML file with the network switched off and returns what a reader would
see: the visible text, how many images rendered (decoded, non-zero size) out of how many, the document
height, and a full-page screenshot (PNG bytes).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@dataclass
class Seen:
    text: str
    images: int
    images_rendered: int
    height: int
    screenshot: bytes


def open_page(path: Path, width: int = 1400) -> Seen:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver (make install does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},900",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):  # offline: any fetch fails
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        driver.get(path.resolve().as_uri())
        counts = driver.execute_script(
            "const imgs = Array.from(document.images);"
            "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length,"
            " document.documentElement.scrollHeight];"
        )
        driver.set_window_size(width, min(int(counts[2]) + 50, 12000))
        shot = driver.get_screenshot_as_png()
        text = driver.find_element("tag name", "body").text
    finally:
        driver.quit()
    return Seen(text=text, images=int(counts[0]), images_rendered=int(counts[1]), height=int(counts[2]), screenshot=shot)
