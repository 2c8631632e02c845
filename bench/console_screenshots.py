"""Save the README's console screenshots: ``python -m bench.console_screenshots [OUT_DIR]``.

Starts a gateway in a temporary directory (built-in emulator), makes a few signed edits, signs in
an auditor in Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) and saves the
ledger page and the verify page of one signed image; then holds a few turns for review (opened as
the pipeline opens them), signs in a reviewer and saves the review queue and one task's page, all
to ``docs/screenshots/`` (or ``OUT_DIR``). The browser steps are the ones
``tests/test_console_browser.py`` and ``tests/test_console_review_browser.py`` check.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, FIXTURES, start_custody
from tests.console_browser import screenshot, sign_in, upload_for_verification
from tests.console_helpers import make_account, signed_image
from tests.console_review_helpers import make_reviewer, open_shown_task

ROOT = Path(__file__).resolve().parents[1]


def main(out_dir: Path = ROOT / "docs" / "screenshots") -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        running = start_custody(Path(tmp) / "custody")
        try:
            make_account(running, "alice", "auditor", groups=["legal"])
            photo = (FIXTURES / "photos" / "sample1.png").read_bytes()
            images = [signed_image(running, photo) for _ in range(2)]
            signed = Path(tmp) / "teal-bicycle.png"
            signed.write_bytes(images[-1])
            make_reviewer(running, "rita")
            task = open_shown_task(
                running, photo, output=images[0], reviewer_group="brand", approvals_required=2
            )
            open_shown_task(running, photo, stage="request", reviewer_group="brand",
                            review_deadline_s=7200, requester="ana@acme")  # fmt: skip
            open_shown_task(running, photo, reviewer_group="legal", review_deadline_s=600)
            saved = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
                sign_in(page, running.base_url, "alice", path="/console/ledger")
                page.click("text=Verify the whole ledger now")
                saved.append(screenshot(page, out_dir / "console-ledger.png"))
                upload_for_verification(page, running.base_url, signed)
                saved.append(screenshot(page, out_dir / "console-verify.png"))
                page.click("text=Sign out")
                sign_in(page, running.base_url, "rita", path="/console/reviews")
                saved.append(screenshot(page, out_dir / "console-queue.png"))
                page.goto(f"{running.base_url}/console/reviews/{task.task_id}")
                page.fill("textarea[name=comment]", "Brand colours match; the face is not shown.")
                saved.append(screenshot(page, out_dir / "console-task.png"))
                browser.close()
        finally:
            running.stop()
    for path in saved:
        print(f"saved {path} ({path.stat().st_size:,} bytes)")
    return saved


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
