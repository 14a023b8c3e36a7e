"""The jobs page in headless Chromium: what a person watching last night's run sees and does, checked on the
rendered page and on its screenshots (pixels counted, not HTML strings), against jobs in a real database."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageStat
from playwright.sync_api import Locator, expect

from tests.browser.conftest import HOSTILE_FAILED_ID, HOSTILE_OUTPUT_ID, READ_TOKEN, SUBMIT_TOKEN, Tab

#: How far a screenshot's pixel may be from a colour and still count as that colour (per channel).
COLOUR_TOLERANCE = 8
#: How far a segment's share of the bar's pixels may be from its share of the items (rounded ends, edges).
SHARE_TOLERANCE = 0.02
OUTCOMES = ("succeeded", "failed", "cancelled")

Colour = tuple[int, int, int]


def css_colour(locator: Locator) -> Colour:
    """The element's computed background colour."""
    text = locator.evaluate("node => getComputedStyle(node).backgroundColor")
    red, green, blue = (int(part) for part in re.findall(r"\d+", text)[:3])
    return red, green, blue


def close(seen: tuple[float, ...], expected: tuple[float, ...], tolerance: float) -> bool:
    """Whether every channel of `seen` is within `tolerance` of `expected`'s."""
    return all(abs(a - b) <= tolerance for a, b in zip(seen, expected, strict=True))


def check_bar(bar: Locator, job: dict[str, int], path: Path) -> None:
    """The bar's screenshot: each outcome's colour covers its share of the bar, as its items do of the job.

    The bar's pixels are those of its four colours (the outcomes' and the track's, for items not ended):
    the screenshot's edges may hold a row of the page around it, and its rounded ends blend into the page.
    """
    bar.screenshot(path=str(path))
    colours = {outcome: css_colour(bar.locator(f".segment-{outcome}")) for outcome in OUTCOMES}
    colours["open"] = css_colour(bar)
    assert len(set(colours.values())) == len(colours), f"two parts of the bar share a colour: {colours}"
    with Image.open(path) as shot:
        pixels = np.asarray(shot.convert("RGB"), dtype=np.int16)
    counts = {
        part: int((np.abs(pixels - np.array(colour)) <= COLOUR_TOLERANCE).all(axis=2).sum())
        for part, colour in colours.items()
    }
    bar_pixels = sum(counts.values())
    assert bar_pixels > 0.8 * pixels.shape[0] * pixels.shape[1], f"the bar is not in its screenshot {path}"
    for outcome in OUTCOMES:
        expected = job[outcome] / job["total"]
        seen = counts[outcome] / bar_pixels
        assert abs(seen - expected) <= SHARE_TOLERANCE, (
            f"{seen:.3f} of the bar is {outcome} colour {colours[outcome]}, but {job[outcome]} of "
            f"{job['total']} items are {outcome} ({path})"
        )


def test_a_server_with_tokens_asks_for_one_and_then_lists_running_and_finished_jobs(tab: Tab) -> None:
    site, page = tab.site, tab.page
    tab.open("/", None)
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#notice")).to_contain_text("token")
    expect(page.locator("#jobs")).to_be_hidden()

    page.fill("#token-input", READ_TOKEN)
    page.click("#token-submit")
    expect(page.locator("#token-name")).to_have_text("reader")
    expect(page.locator("#scopes")).to_have_text("read")

    running = page.locator(f"tr[data-job-id='{site.running_job}']")
    expect(running.locator(".state")).to_have_text("running")
    expect(running.locator(".kind")).to_have_text("caption")
    expect(running.locator(".progress-text")).to_have_text("5 / 10")
    expect(running.locator(".job-link")).to_have_text(site.running_job[:8])
    finished = page.locator(f"tr[data-job-id='{site.edit_job}']")
    expect(finished.locator(".state")).to_have_text("partial")
    expect(finished.locator(".progress-text")).to_have_text("5 / 5")
    expect(finished.locator(".source")).to_have_text(str(site.inputs / "edits.jsonl"))
    expect(page.locator(f"tr[data-job-id='{site.caption_job}'] .state")).to_have_text("partial")
    check_bar(running.locator(".bar"), site.job(site.running_job), tab.tmp_path / "list-bar.png")

    # The token stays in this tab's sessionStorage, never in a cookie.
    assert page.context.cookies() == []
    assert page.evaluate("() => Object.values(sessionStorage)") == [READ_TOKEN]

    running.locator(".kind").click()
    expect(page).to_have_url(f"{site.url}/jobs/{site.running_job}")
    expect(page.locator("#job-id")).to_have_text(site.running_job)


def test_the_progress_bar_shows_each_outcome_as_its_share_of_the_items(tab: Tab) -> None:
    site, page = tab.site, tab.page
    tab.job_page(site.running_job, READ_TOKEN)
    job = site.job(site.running_job)
    assert (job["succeeded"], job["failed"], job["running"], job["total"]) == (4, 1, 2, 10)
    expect(page.locator("[data-counter=succeeded] dd")).to_have_text("4")
    check_bar(page.locator("#job-progress .bar"), job, tab.tmp_path / "job-bar.png")


def test_a_job_page_shows_counters_errors_by_code_with_an_example_and_captions(tab: Tab) -> None:
    site, page = tab.site, tab.page
    tab.job_page(site.caption_job, READ_TOKEN)
    job = site.job(site.caption_job)
    for name in ("total", "queued", "running", "succeeded", "failed", "cancelled"):
        expect(page.locator(f"[data-counter={name}] dd")).to_have_text(str(job[name]))
    assert (job["succeeded"], job["failed"]) == (3, 1)
    expect(page.locator("#job-state .state")).to_have_text("partial")
    expect(page.locator("[data-fact=eta] dd")).to_have_text("ended")

    rows = site.results(site.caption_job)
    broken = next(row for row in rows if row["status"] == "failed")
    error = page.locator(".error-row[data-code=invalid_image]")
    expect(error.locator(".error-count")).to_have_text("1")
    expect(error.locator(".example .item-id")).to_have_text([broken["id"]])
    expect(error.locator(".example .error-message")).to_have_text([broken["error"]])

    captions = [row for row in rows if row["status"] == "succeeded"]
    cards = page.locator(".output-caption")
    expect(cards).to_have_count(len(captions))
    for row in captions:
        card = page.locator(".output-caption").filter(has_text=row["id"])
        expect(card.locator(".caption-text")).to_have_text(row["output"])
    assert all(row["output"].startswith("image ") for row in captions)  # the backend's captions, not empty
    page.screenshot(path=str(tab.tmp_path / "caption-job.png"), full_page=True)


def test_image_outputs_show_as_decoded_thumbnails_of_the_outputs(tab: Tab) -> None:
    site, page = tab.site, tab.page
    tab.job_page(site.edit_job, READ_TOKEN)
    made = [row for row in site.results(site.edit_job) if row["status"] == "succeeded"]
    thumbs = page.locator(".output-image img.thumb")
    expect(thumbs).to_have_count(len(made))
    page.wait_for_function(
        "() => [...document.querySelectorAll('.output-image img.thumb')]"
        ".every(img => img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:'))"
    )
    for row in made:
        card = page.locator(".output-image").filter(has=page.get_by_text(row["id"], exact=True))
        img = card.locator("img.thumb")
        assert img.evaluate("img => img.naturalWidth") > 0
        path = tab.tmp_path / f"thumb-{made.index(row)}.png"
        img.screenshot(path=str(path))
        shown = Image.open(path).convert("RGB")
        spread = ImageStat.Stat(shown.convert("L")).stddev[0]
        assert spread > 10, f"the thumbnail of {row['id']!r} is a flat colour ({path})"
        # The thumbnail is of this item's own output: their mean colours agree.
        with Image.open(row["output"]) as stored:
            expected = ImageStat.Stat(stored.convert("RGB")).mean
        seen = ImageStat.Stat(shown).mean
        assert close(tuple(seen), tuple(expected), 12), (row["id"], seen, expected, path)


def test_a_read_only_token_gets_no_cancel_or_retry_and_a_submit_token_does(tab: Tab) -> None:
    site, page = tab.site, tab.page
    tab.job_page(site.running_job, READ_TOKEN)
    expect(page.locator("[data-counter=failed] dd")).to_have_text("1")
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#retry")).to_be_hidden()

    page.click("#forget-token")
    page.fill("#token-input", SUBMIT_TOKEN)
    page.click("#token-submit")
    expect(page.locator("#token-name")).to_have_text("submitter")
    expect(page.locator("#cancel")).to_be_visible()
    expect(page.locator("#retry")).to_be_visible()


def test_cancel_ends_the_job_cancelled_in_the_database(tab: Tab) -> None:
    site, page = tab.site, tab.page
    job_id = site.running(total=5, succeeded=2)
    tab.job_page(job_id, SUBMIT_TOKEN)
    expect(page.locator("#job-state .state")).to_have_text("running")
    page.click("#cancel")
    expect(page.locator("#job-state .state")).to_have_text("cancelled")
    assert tab.dialogs and tab.dialogs[0].startswith("confirm: Cancel job")
    job = site.job(job_id)
    assert (job["status"], job["succeeded"], job["cancelled"], job["queued"]) == ("cancelled", 2, 3, 0)
    expect(page.locator("[data-counter=cancelled] dd")).to_have_text("3")
    expect(page.locator("#cancel")).to_be_hidden()  # an ended job has nothing to cancel
    check_bar(page.locator("#job-progress .bar"), job, tab.tmp_path / "cancelled-bar.png")


def test_retry_failed_queues_the_failed_items_again(tab: Tab) -> None:
    site, page = tab.site, tab.page
    job_id = site.running(total=4, succeeded=1, failed=2)
    tab.job_page(job_id, SUBMIT_TOKEN)
    expect(page.locator(".error-row[data-code=invalid_image] .error-count")).to_have_text("2")
    page.click("#retry")
    expect(page.locator("#action-result")).to_have_text("2 failed items queued again.")
    expect(page.locator("[data-counter=failed] dd")).to_have_text("0")
    expect(page.locator("#errors-card")).to_be_hidden()
    expect(page.locator("#retry")).to_be_hidden()
    job = site.job(job_id)
    assert (job["failed"], job["queued"], job["succeeded"]) == (0, 3, 1)


def test_the_job_page_refreshes_itself_while_the_job_runs(tab: Tab) -> None:
    site, page = tab.site, tab.page
    job_id = site.running(total=6, succeeded=1)
    tab.job_page(job_id, READ_TOKEN)
    expect(page.locator("[data-counter=succeeded] dd")).to_have_text("1")
    expect(page.locator(".output-caption")).to_have_count(1)

    site.work(job_id, 2, succeeded=1, failed=1)
    expect(page.locator("[data-counter=succeeded] dd")).to_have_text("2")
    expect(page.locator("[data-counter=failed] dd")).to_have_text("1")
    expect(page.locator(".error-row[data-code=invalid_image] .error-count")).to_have_text("1")
    expect(page.locator(".output-caption")).to_have_count(2)

    site.work(job_id, 3, succeeded=3)
    expect(page.locator("#job-state .state")).to_have_text("partial")
    expect(page.locator("[data-counter=succeeded] dd")).to_have_text("5")


def test_hostile_item_ids_are_shown_as_text(tab: Tab) -> None:
    site, page = tab.site, tab.page
    tab.job_page(site.edit_job, READ_TOKEN)
    failed = page.locator(".error-row[data-code=invalid_image] .example .item-id")
    expect(failed).to_have_text([HOSTILE_FAILED_ID])
    shown = page.locator(".output-image .item-id").filter(has_text=HOSTILE_OUTPUT_ID)
    expect(shown).to_have_text(HOSTILE_OUTPUT_ID)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.output-image img.thumb')].every(img => img.complete)"
    )
    # The ids made no element: no image with src=x, no script beyond the page's own.
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("() => [...document.scripts].map(s => s.getAttribute('src'))") == ["/static/job.js"]
    assert tab.dialogs == []


def test_an_open_api_needs_no_token_and_grants_both_scopes(tab: Tab, open_url: str) -> None:
    site, page = tab.site, tab.page
    tab.open("/", None, server=open_url)
    expect(page.locator("#auth")).to_contain_text("open API, no token needed")
    expect(page.locator("#token-form")).to_have_count(0)
    expect(page.locator(f"tr[data-job-id='{site.running_job}'] .state")).to_have_text("running")
    tab.open(f"/jobs/{site.running_job}", None, server=open_url)
    expect(page.locator("#cancel")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_a_job_that_does_not_exist_is_said_so(tab: Tab) -> None:
    page = tab.page
    tab.open("/jobs/0123456789abcdef", READ_TOKEN)
    expect(page.locator("#notice")).to_contain_text("no job 0123456789abcdef")
    expect(page.locator("#job")).to_be_hidden()
