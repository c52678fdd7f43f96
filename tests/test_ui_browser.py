"""The Prefect UI in a real browser (Debian's headless Chromium driven by Playwright), as a user would use it:
open the build-dataset deployment, fill the custom-run form, submit, wait for Completed, open the run's
artifacts and read the per-shard table. `.ci/run` installs chromium and playwright; elsewhere it skips."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from storage.store import DatasetStore
from tests.helpers import UICommand, free_port, wait_for_flow_run

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium, headless, without the background traffic a fresh profile would start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _field(page, name: str):
    """The input of a parameter in Prefect's schema form (its <label for> does not point at the control)."""
    label = page.locator("span.schema-form-property__label", has_text=re.compile(rf"^{name} \(Optional\)$"))
    prop = label.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]")
    return prop


def test_custom_run_from_the_browser(tmp_path, small_images, tiny_teacher_onnx):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (see .ci/run)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; see .ci/run)")
    expect = sync_api.expect
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    store = tmp_path / "from-browser.zarr"
    run_name = "browser-custom-run"
    ui = UICommand(tmp_path, port, "--worker-limit", "1")
    try:
        ui.wait_for(r"Prefect UI: ")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{base}/deployments")
                page.get_by_role("link", name="build-dataset").first.click()
                page.wait_for_url("**/deployments/deployment/**")
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_text("Custom run").click()
                page.wait_for_url("**/run**")

                # The form comes from build_dataset's signature and docstring.
                expect(page.get_by_text("samples per shard = the unit one task writes whole")).to_be_visible()
                run_field = page.locator(".flow-run-name-input input")
                run_field.fill(run_name)
                _field(page, "images").locator("textarea").fill(str(small_images))
                _field(page, "out").locator("textarea").fill(str(store))
                _field(page, "shard_size").locator("input").fill("2")
                _field(page, "height").locator("input").fill("96")
                _field(page, "width").locator("input").fill("320")
                teacher = _field(page, "teacher")
                teacher.get_by_role("button", name="str", exact=True).click()  # str | None: pick str
                teacher.locator("textarea, input").first.fill(str(tiny_teacher_onnx))
                page.get_by_role("button", name="Submit").click()

                page.get_by_role("link", name=run_name).click()
                page.wait_for_url("**/runs/flow-run/**")
                # Other text on the page can read "Completed" while this run is still Running, so wait for the
                # run's own terminal state (the id is in the URL), then check the page shows it.
                run_id = page.url.rstrip("/").split("/runs/flow-run/")[1].split("?")[0].split("/")[0]
                state = wait_for_flow_run(f"{base}/api", run_id)
                assert state["type"] == "COMPLETED", state
                page.reload()
                expect(page.get_by_text("Completed", exact=True).first).to_be_visible()

                page.locator("li.p-tab", has_text="Artifacts").click()
                for key in ("build-progress", "build-previews"):
                    expect(page.get_by_text(key, exact=True)).to_be_visible()
                page.get_by_text("build-shards", exact=True).click()
                table = page.locator("table")
                expect(table.locator("th", has_text="lidar_density_mean")).to_be_visible()
                expect(table.locator("tbody tr")).to_have_count(3)  # 5 photos, 2 per shard
                first_row = [c.strip() for c in table.locator("tbody tr").first.locator("td").all_inner_texts()]
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        assert ui.interrupt() == 0, ui.text()
        ui.kill()
    # The table the browser showed is the store's first shard.
    rows = [r for r in DatasetStore.open(store).manifest().to_pylist() if r["shard"] == 0]
    assert first_row[:3] == ["0", str(len(rows)), str(sum(r["status"] == "ok" for r in rows))]
