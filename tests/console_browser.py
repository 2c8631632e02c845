"""What a person does in the console, in a real browser (Playwright pages): shared by the browser
tests and by ``bench/console_screenshots.py``, which saves the pictures the README shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.console_helpers import PASSWORD


def sign_in(page: Any, base_url: str, username: str, *, tenant: str = "acme",
            password: str = PASSWORD, path: str = "/console/") -> None:  # fmt: skip
    """Open ``path``; the console sends the browser to sign in, then back to ``path``."""
    page.goto(base_url + path)
    page.fill("input[name=tenant]", tenant)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def upload_for_verification(page: Any, base_url: str, image: Path) -> None:
    page.goto(base_url + "/console/verify")
    page.set_input_files("input[name=image]", str(image))
    page.click("main button[type=submit]")


def screenshot(page: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path
