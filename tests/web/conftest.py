"""The playground in a real browser: Debian's `chromium` driven by Playwright for Python.

Playwright's own browser download cannot run here (and CI installs Debian's package), so the browser is launched
from its executable path. Every page records console errors and uncaught exceptions; tests assert there are none
beyond the HTTP errors they provoke on purpose. Screenshots go to $LTXSERVE_TEST_ARTIFACTS (or a pytest tmp dir).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.fixtures_server import tiny_ltx_server

CHROMIUM = os.environ.get("LTXSERVE_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's chromium (`apt-get install -y chromium`, as .ci/run "
                    "does) or point LTXSERVE_CHROMIUM at one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("LTXSERVE_TEST_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("playground-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    """`ltxserve serve` on the tiny random-weight model with the real image-to-video endpoint."""
    with tiny_ltx_server(tmp_path_factory.mktemp("playground")) as server:
        yield server


@pytest.fixture(scope="session")
def scene_png(tmp_path_factory) -> Path:
    """A 480x320 (3:2) picture: sky, sun and hills, so that the crop preview and screenshots say something."""
    image = Image.new("RGB", (480, 320))
    draw = ImageDraw.Draw(image)
    for y in range(320):
        draw.line([(0, y), (480, y)], fill=(40 + y // 4, 110 + y // 5, 220 - y // 6))
    draw.ellipse((330, 40, 400, 110), fill=(255, 214, 90))
    draw.polygon([(0, 320), (0, 230), (120, 170), (260, 240), (380, 190), (480, 230), (480, 320)], fill=(46, 125, 70))
    path = tmp_path_factory.mktemp("images") / "scene.png"
    image.save(path)
    return path


_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class Tab:
    page: object
    errors: list[str] = field(default_factory=list)

    def check_console(self, allowed_statuses: tuple[int, ...] = ()) -> None:
        """No console errors or uncaught exceptions, except HTTP errors with the statuses the test provoked."""
        unexpected = []
        for message in self.errors:
            m = _HTTP_ERROR.search(message)
            if m and int(m.group(1)) in allowed_statuses:
                continue
            unexpected.append(message)
        assert not unexpected, unexpected


@pytest.fixture
def open_tab(browser, artifacts):
    contexts = []

    def make(url: str, *, viewport=(1280, 900), permissions: list[str] | None = None, before=None,
             ready: bool = True) -> Tab:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                      permissions=permissions or [])
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        tab = Tab(page)
        page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
        if before:
            before(page)
        page.goto(url)
        if ready:
            page.wait_for_selector("body[data-ready=true]")
        return tab

    yield make
    for c in contexts:
        c.close()


@pytest.fixture
def shoot(artifacts):
    """shoot(page, "name"): a full-page screenshot in the artifacts folder."""

    def take(page, name: str, **kw) -> Path:
        path = artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=kw.pop("full_page", True), **kw)
        return path

    return take
