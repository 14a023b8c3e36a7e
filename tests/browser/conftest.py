"""Fixtures of the jobs page's tests: real jobs in a SQLite database, `ovis-batch serve` on them, and Debian's
Chromium driven by Playwright through its executable path (no browser is ever downloaded).

The finished jobs are run by `ovis-batch run` (the worker's own chunk code on the torch-free backend): their
outputs, captions and failures are what a worker makes. Jobs still running are submitted here and moved the
way a worker moves them, through the state functions a worker calls, with no worker to finish them, so that
the page shows them mid-way for as long as a test looks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
from sqlalchemy import select

from jobs.api import Client
from jobs.db import session_scope
from jobs.http.auth import token_digest
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.settings import Settings
from jobs.state import claim_items, finalize_job, record_failures, record_successes
from tests.plugins.services import free_port, service_unavailable

CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent
#: Item ids as a hostile manifest may name them: the page must show them as text.
HOSTILE_FAILED_ID = "<img src=x onerror=alert(1)>"
HOSTILE_OUTPUT_ID = "<script>alert(2)</script>"
READ_TOKEN = "ovb_browser-test-reader-0123456789abcdef"
SUBMIT_TOKEN = "ovb_browser-test-submitter-0123456789abcdef"
#: A worker name for the items the fixtures claim: no worker of that name runs.
WORKER = "gpu-host-1"
_START_TIMEOUT_S = 60.0
_PORT_TRIES = 5
# What the page shows next comes at its next refresh (every few seconds) on a machine that may be busy: wait
# that long for a condition before calling it false.
expect.set_options(timeout=20_000)


class NoDispatch:
    """Chunks go nowhere: the fixtures themselves move the items of the jobs they submit."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Drop the chunk."""


@dataclass
class Site:
    """The served jobs: the page's address, the tokens, and the jobs the tests look at."""

    url: str
    settings: Settings
    inputs: Path
    #: The environment `ovis-batch` commands of the site run with.
    env: dict[str, str]
    #: Finished by `ovis-batch run`: three edited images and two failures (invalid_image, input_missing).
    edit_job: str = ""
    #: Finished by `ovis-batch run`: three captions and one invalid_image failure.
    caption_job: str = ""
    #: 10 items: 4 succeeded, 1 failed, 2 running, 3 queued.
    running_job: str = ""
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = Client(self.settings, NoDispatch())

    def running(self, *, total: int, succeeded: int, failed: int = 0, running: int = 0) -> str:
        """Submit a caption job of `total` images and move its first items as a worker would: `succeeded`
        with a caption, `failed` with invalid_image, `running` claimed and left so; the rest stay queued."""
        folder = self.inputs / f"running-{total}-{succeeded}-{failed}-{running}-{time.monotonic_ns()}"
        folder.mkdir()
        for index in range(total):
            gradient(64, 48, index).save(folder / f"img{index:03d}.png")
        job_id = self.client.submit(JobKind.CAPTION, str(folder))
        claimed = succeeded + failed + running
        if claimed:
            self.work(job_id, claimed, succeeded=succeeded, failed=failed)
        return job_id

    def work(self, job_id: str, count: int, *, succeeded: int, failed: int = 0) -> None:
        """Claim the job's next `count` queued items and end `succeeded`, then `failed` of them."""
        with session_scope(self.client.db) as session:
            seqs = list(
                session.scalars(
                    select(Item.seq)
                    .where(Item.job_id == job_id, Item.status == "queued")
                    .order_by(Item.seq)
                    .limit(count)
                )
            )
            claim_items(
                session,
                job_id=job_id,
                start=seqs[0],
                stop=seqs[-1] + 1,
                worker=WORKER,
                lease_seconds=3600,
                max_attempts=3,
            )
            ended = seqs[:succeeded]
            record_successes(session, job_id=job_id, outputs={seq: f"a photo, number {seq}" for seq in ended})
            broken = seqs[succeeded : succeeded + failed]
            failures = {seq: ("invalid_image", "not an image file PIL can read") for seq in broken}
            record_failures(session, job_id=job_id, failures=failures)
            finalize_job(session, job_id=job_id)  # as a worker does after each batch: ends it if all ended

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's status as the database has it."""
        return self.client.status(job_id).as_dict()

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """The job's results rows."""
        return list(self.client.iter_results(job_id))


def gradient(width: int, height: int, seed: int) -> Image.Image:
    """An image with no flat area: colour ramps in three directions, shifted by `seed`."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 255 // width + seed * 40) % 256, y * 255 // height, ((x + y) * 3 + seed * 17) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run(env: dict[str, str], kind: str, manifest: Path, cwd: Path) -> str:
    """`ovis-batch run KIND --input MANIFEST`; the id of the job it ran."""
    result = subprocess.run(
        [str(BIN / "ovis-batch"), "run", kind, "--input", str(manifest)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"ovis-batch run {kind} failed:\n{result.stdout}\n{result.stderr}"
    for line in result.stdout.splitlines():
        if line.startswith("job "):
            return line.split()[1].rstrip(":")
    raise AssertionError(f"ovis-batch run {kind} named no job:\n{result.stdout}")


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _serve(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `ovis-batch serve` on a free port (another when some process took it first)."""
    for _ in range(_PORT_TRIES):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(BIN / "ovis-batch"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _health(url):
                return process, url
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
        process.wait()
        if "address already in use" not in log_path.read_text(errors="replace").lower():
            break
    raise AssertionError(f"ovis-batch serve did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium: skipped without it, except under CI, where its absence fails the test."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        service_unavailable("Chromium", f"{CHROMIUM} is not installed (Debian's chromium package)")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """Headless Chromium under Playwright."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def site(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`ovis-batch serve` with a read and a submit token on a SQLite database holding finished and running
    jobs."""
    root = tmp_path_factory.mktemp("site")
    home, inputs = root / "home", root / "inputs"
    inputs.mkdir()
    values = {
        "home": str(home),
        "database_url": f"sqlite:///{home / 'ovis-batch.db'}",
        "storage_url": str(home / "outputs"),
        "input_roots": str(inputs),
        "backend": "fake",
        "api_tokens": ",".join(
            [f"reader:read:{token_digest(READ_TOKEN)}", f"submitter:submit:{token_digest(SUBMIT_TOKEN)}"]
        ),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env |= {f"OVIS_BATCH_{name.upper()}": value for name, value in values.items()}
    env["PYTHONUNBUFFERED"] = "1"

    for index in range(4):
        gradient(80, 80, index).save(inputs / f"photo{index}.png")
    (inputs / "broken.png").write_bytes(b"not an image at all")
    edits = [
        {"id": "photo0", "image": "photo0.png", "instruction": "make the sky blue"},
        {"id": HOSTILE_OUTPUT_ID, "image": "photo1.png", "instruction": "add a hat"},
        {"id": "photo2", "image": "photo2.png", "instruction": "a sunset"},
        {"id": HOSTILE_FAILED_ID, "image": "broken.png", "instruction": "fix it"},
        {"id": "gone", "image": "missing.png", "instruction": "fix it"},
    ]
    captions = [
        {"id": "beach", "image": "photo0.png"},
        {"id": "forest", "image": "photo1.png"},
        {"id": "city", "image": "photo3.png"},
        {"id": "broken-one", "image": "broken.png"},
    ]
    edit_job = _run(env, "edit", _manifest(inputs / "edits.jsonl", edits), root)
    caption_job = _run(env, "caption", _manifest(inputs / "captions.jsonl", captions), root)

    process, url = _serve(env, root / "serve.log")
    try:
        served = Site(url=url, settings=Settings(**values), inputs=inputs, env=env)
        served.edit_job, served.caption_job = edit_job, caption_job
        served.running_job = served.running(total=10, succeeded=4, failed=1, running=2)
        yield served
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def open_url(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of `ovis-batch serve` on the same jobs with no token configured: an open API."""
    env = {name: value for name, value in site.env.items() if name != "OVIS_BATCH_API_TOKENS"}
    process, url = _serve(env, tmp_path_factory.mktemp("open") / "serve.log")
    try:
        yield url
    finally:
        _stop(process)


@dataclass
class Tab:
    """A page in a browser context of its own (its own sessionStorage), with what its scripts did wrong and
    the dialogs they opened."""

    page: Page
    site: Site
    #: The test's own folder, for its screenshots.
    tmp_path: Path
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def open(self, path: str, token: str | None, *, server: str | None = None) -> None:
        """Load `path` (of the site's server, or `server`); paste `token` into the token form (a server with
        tokens asks for one first)."""
        self.page.goto((server or self.site.url) + path)
        if token is not None:
            self.page.fill("#token-input", token)
            self.page.click("#token-submit")
            self.page.wait_for_selector("#token-name")

    def job_page(self, job_id: str, token: str) -> None:
        """A job's page, once its counters are shown."""
        self.open(f"/jobs/{job_id}", token)
        self.page.wait_for_selector("[data-counter=total] dd")


@pytest.fixture
def tab(browser: Browser, site: Site, tmp_path: Path) -> Iterator[Tab]:
    """A fresh tab on the site: a context of its own, 1280x900 at one device pixel per CSS pixel."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    opened = Tab(page, site, tmp_path)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))

    def answer(dialog: Dialog) -> None:
        # The page asks before cancelling (confirm); anything else would be a script that should not run.
        opened.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", answer)
    try:
        yield opened
    finally:
        context.close()
    assert not opened.errors, f"the page's scripts failed: {opened.errors}"
