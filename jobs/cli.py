"""The producer commands of `ovis-batch`: submit, watch and manage jobs, export results, migrate the database,
and serve the HTTP API and jobs page (`serve`, jobs/http) with its tokens (`token new`).

The console script (workers.cli) composes them with the worker commands; nothing here imports workers or
gpu_model, so a producer without the model stack runs every one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from jobs.api import Client, JobReport
from jobs.errors import InvalidExport
from jobs.export import ExportOptions, ExportReport, write_export
from jobs.export_destination import format_of
from jobs.http.commands import serve, token_app
from jobs.lifecycle import JobKind
from jobs.settings import Settings, get_settings
from jobs.terminal import console, err, guard
from jobs.version import package_version

app = typer.Typer(
    help="Batch captioning, text-to-image and editing with Ovis-U1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
submit_app = typer.Typer(help="Submit a job to the workers.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(submit_app, name="submit")
app.add_typer(db_app, name="db")
# The HTTP API and the jobs page (jobs/http), and its tokens.
app.command()(serve)
app.add_typer(token_app, name="token")

#: `--out -`: the export goes to stdout.
STDOUT = "-"


def _show_version(value: bool) -> None:
    if value:
        print(f"ovis-batch {package_version()}")
        raise typer.Exit()


#: The options before any command; the console script (workers.cli) makes this its callback.
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Batch captioning, text-to-image and editing with Ovis-U1."""


#: What a job command of one kind does with what it was given: kind, source, parameters, priority, output URL,
#: whether to reuse earlier outputs, and the URL to notify when the job ends.
KindAction = Callable[[JobKind, str, dict[str, Any], int, str | None, bool, str | None], None]


# -- submit / run: one definition of each kind's options, used by both (run: workers.cli) --------------------
CaptionInputOpt = typer.Option(
    ...,
    "--input",
    "-i",
    help="Images to caption: a folder or s3:// prefix (read recursively), WebDataset tar shards "
    "(shards/{00000..00099}.tar, local or s3://), or a .jsonl/.csv/.parquet manifest with an image column "
    "(.jsonl.gz and .csv.gz too).",
)
GenerateInputOpt = typer.Option(
    ...,
    "--input",
    "-i",
    help="Prompts: a .txt file (one prompt per line) or a .jsonl/.csv/.parquet manifest with a prompt "
    "column, local or s3://.",
)
EditInputOpt = typer.Option(
    ...,
    "--input",
    "-i",
    help="A .jsonl/.csv/.parquet manifest with an image and an instruction column, local or s3://; image "
    "references relative to the manifest's folder.",
)
NotifyOpt = typer.Option(
    None,
    "--notify-url",
    help="POST a signed JSON notification to this http(s) URL when the job ends (default: "
    "OVIS_BATCH_NOTIFY_URL; README, Notifications).",
)
SeedOpt = typer.Option(42, help="Job seed; each item's seed derives from it and the item's id.")
PriorityOpt = typer.Option(0, min=0, max=9, help="0 (lowest) to 9: higher runs first.")
OutputOpt = typer.Option(None, "--output", help="Storage URL for outputs (default: OVIS_BATCH_STORAGE_URL).")
FormatOpt = typer.Option(
    None,
    "--image-format",
    help="png (default, lossless), jpeg (alpha composited on white) or webp; a manifest's image_format field "
    "sets it per item.",
)
QualityOpt = typer.Option(
    None, min=1, max=100, help="1-100 for jpeg and webp (default 90); a manifest's quality field, per item."
)
SkipOpt = typer.Option(
    False,
    "--skip-existing",
    help="Reuse an earlier job's output where it is the one this item would get (same input bytes, prompt, "
    "parameters, seed, model and output location); compute only the rest.",
)


def _drop_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def register_kinds(target: typer.Typer, action: KindAction) -> None:
    """Add a caption, a generate and an edit command to `target`, each calling `action` with its options."""

    @target.command("caption")
    def caption(
        input: str = CaptionInputOpt,
        prompt: str | None = typer.Option(None, help="Question put to the model for every image."),
        max_new_tokens: int | None = typer.Option(None, help="Longest caption, in tokens."),
        temperature: float = typer.Option(0.0, help="0 = greedy decoding."),
        max_pixels: int | None = typer.Option(
            None,
            help="Most pixels the model sees of each image, 200704-3211264 (448x448 to 1792x1792); fewer is "
            "faster, with less detail. 0 = the model's default; a manifest's max_pixels field, per item.",
        ),
        seed: int = SeedOpt,
        priority: int = PriorityOpt,
        output: str | None = OutputOpt,
        skip_existing: bool = SkipOpt,
        notify_url: str | None = NotifyOpt,
    ) -> None:
        """Caption images."""
        params = _drop_none(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        params |= _drop_none(max_pixels=max_pixels)
        action(JobKind.CAPTION, input, params, priority, output, skip_existing, notify_url)

    @target.command("generate")
    def generate(
        input: str = GenerateInputOpt,
        width: int | None = typer.Option(None, help="Output width (multiple of 16)."),
        height: int | None = typer.Option(None, help="Output height (multiple of 16)."),
        steps: int | None = typer.Option(None, help="Sampling steps."),
        txt_cfg: float | None = typer.Option(None, help="Text guidance scale."),
        image_format: str | None = FormatOpt,
        quality: int | None = QualityOpt,
        seed: int = SeedOpt,
        priority: int = PriorityOpt,
        output: str | None = OutputOpt,
        skip_existing: bool = SkipOpt,
        notify_url: str | None = NotifyOpt,
    ) -> None:
        """Render images from prompts."""
        params = _drop_none(width=width, height=height, steps=steps, txt_cfg=txt_cfg, seed=seed)
        params |= _drop_none(image_format=image_format, quality=quality)
        action(JobKind.GENERATE, input, params, priority, output, skip_existing, notify_url)

    @target.command("edit")
    def edit(
        input: str = EditInputOpt,
        steps: int | None = typer.Option(None, help="Sampling steps."),
        img_cfg: float | None = typer.Option(None, help="Image guidance scale."),
        txt_cfg: float | None = typer.Option(None, help="Text guidance scale."),
        image_format: str | None = FormatOpt,
        quality: int | None = QualityOpt,
        seed: int = SeedOpt,
        priority: int = PriorityOpt,
        output: str | None = OutputOpt,
        skip_existing: bool = SkipOpt,
        notify_url: str | None = NotifyOpt,
    ) -> None:
        """Edit images following instructions (a manifest of image + instruction)."""
        params = _drop_none(steps=steps, img_cfg=img_cfg, txt_cfg=txt_cfg, seed=seed)
        params |= _drop_none(image_format=image_format, quality=quality)
        action(JobKind.EDIT, input, params, priority, output, skip_existing, notify_url)


def _submit(
    kind: JobKind,
    source: str,
    params: dict[str, Any],
    priority: int,
    output: str | None,
    skip: bool,
    notify_url: str | None,
) -> None:
    client = Client(get_settings())
    job_id = guard(
        lambda: client.submit(
            kind,
            source,
            params=params,
            priority=priority,
            output_url=output,
            skip_existing=skip,
            notify_url=notify_url,
        )
    )
    report = client.status(job_id)
    # Outputs reused with --skip-existing are found by the workers, and counted as skipped in `status`.
    console.print(f"submitted {kind.value} job [bold]{job_id}[/bold] with {report.total} items")
    print(job_id)


register_kinds(submit_app, _submit)


# -- watching and managing ---------------------------------------------------------------------------------
JobIdArg = typer.Argument(
    ..., help="The job's id, or its first 8 characters or more (as the progress bar shows them)."
)


@app.command()
def status(
    job_id: str = JobIdArg,
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow progress until the job ends."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    interval: float = typer.Option(1.0, help="Seconds between refreshes with --watch."),
) -> None:
    """Show a job's progress: counters, rate, ETA, GPU time, failures, notification (--watch: live)."""
    from jobs.progress import print_report, report_json
    from jobs.progress import watch as watch_job

    client = Client(get_settings())
    job_id = guard(lambda: client.resolve(job_id))
    report: JobReport = guard(lambda: client.status(job_id))
    if as_json:
        print(json.dumps(report_json(report, client.errors_by_code(job_id) if report.failed else {})))
        return
    if watch and not report.final:
        report = watch_job(client, job_id, console, interval)
    print_report(console, report, client.errors_by_code(job_id) if report.failed else {})


@app.command("list")
def list_jobs(
    status: str | None = typer.Option(None, help="Only jobs in these states (comma-separated)."),
    kind: str | None = typer.Option(None, help="Only jobs of this kind."),
    since: str | None = typer.Option(None, help="Only jobs created since: 90m, 12h, 7d or an ISO date."),
    source: str | None = typer.Option(None, help="Only jobs whose source contains this text."),
    limit: int = typer.Option(50, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List jobs, newest first, with their progress, GPU time and source."""
    from jobs.progress import parse_since

    states = [part.strip() for part in status.split(",") if part.strip()] if status else None
    created = guard(lambda: parse_since(since)) if since else None
    reports = Client(get_settings()).list(status=states, kind=kind, since=created, source=source, limit=limit)
    if as_json:
        for report in reports:
            print(json.dumps(report.as_dict()))
        return
    table = Table("kind", "status", "prio", "done", "failed", "GPU-s", "created")
    table.add_column("source", overflow="fold", max_width=48)
    table.add_column("job", no_wrap=True, min_width=32)
    for r in reports:
        table.add_row(
            r.kind,
            r.status,
            str(r.priority),
            f"{r.done}/{r.total}",
            str(r.failed),
            f"{r.gpu_seconds:,.1f}",
            r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "-",
            escape(r.source) or "-",
            r.id,
        )
    console.print(table)


@app.command()
def export(
    job_id: str = JobIdArg,
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        help="A file, or a folder: a path ending in / or naming an existing folder, s3://bucket/prefix/ "
        "(README, Outputs); - writes a one-file export to stdout (jsonl unless --format says). txt without "
        "--out: a caption file beside each image.",
    ),
    fmt: str = typer.Option(
        "",
        "--format",
        "-f",
        help="jsonl, parquet, txt (a caption file per image) or manifest (the input manifest with the output "
        "as a column); may be left out only for a .jsonl or .parquet --out file.",
    ),
    status: str | None = typer.Option(None, help="Only items in these states (comma-separated)."),
    column: str | None = typer.Option(
        None, help="manifest: the added column (default ovis_caption, or ovis_output for images)."
    ),
    presign: int | None = typer.Option(
        None,
        "--presign",
        metavar="SECONDS",
        help="Add output_https: a link that fetches each S3 output for SECONDS (at most 604800, 7 days); "
        "empty for local outputs.",
    ),
) -> None:
    """Export a job's results (also while it runs, as far as it has come)."""
    states = tuple(part.strip() for part in status.split(",") if part.strip()) if status else ()
    settings = get_settings()

    def run() -> ExportReport:
        chosen = fmt or ("jsonl" if out == STDOUT else format_of(out))
        options = ExportOptions(fmt=chosen, statuses=states, column=column, presign=presign)
        full_id = Client(settings).resolve(job_id)
        if out == STDOUT:
            return _export_to_stdout(settings, full_id, options)
        return write_export(settings, full_id, out, options)

    report: ExportReport = guard(run)
    # With --out -, stdout holds the export alone: what was written is said on stderr.
    (err if out == STDOUT else console).print(report.describe(), markup=False)


def _export_to_stdout(settings: Settings, job_id: str, options: ExportOptions) -> ExportReport:
    """Write a one-file export to a temporary folder, then copy it to stdout; what was written."""
    if options.fmt == "txt":
        raise InvalidExport("txt writes a caption file per image: give --out a folder, not -")
    with tempfile.TemporaryDirectory(prefix="ovis-export-") as folder:
        report = write_export(settings, job_id, folder + os.sep, options)
        if report.files != 1 or report.destination is None:
            raise InvalidExport(
                f"this {options.fmt} export is {report.files} files (one per shard): give --out a folder, "
                "not -"
            )
        with open(report.destination, "rb") as written:
            shutil.copyfileobj(written, sys.stdout.buffer)
        sys.stdout.flush()
    return replace(report, destination="stdout")


@app.command()
def cancel(job_id: str = JobIdArg) -> None:
    """Cancel a job: nothing new starts; running micro-batches finish."""
    client = Client(get_settings())
    report = guard(lambda: client.cancel(client.resolve(job_id)))
    console.print(f"job {report.id}: {report.status}")


@app.command()
def resume(
    job_id: str = JobIdArg,
    release_running: bool = typer.Option(
        False, "--release-running", help="Also take back items leased to workers known to be gone."
    ),
) -> None:
    """Re-dispatch every item of a job that has not ended (queued, expired leases, cancelled)."""
    client = Client(get_settings())
    job_id = guard(lambda: client.resolve(job_id))
    count = guard(lambda: client.resume(job_id, release_running=release_running))
    console.print(f"re-dispatched {count} items of job {job_id}")


@app.command()
def retry(
    job_id: str = JobIdArg,
    failed: bool = typer.Option(True, "--failed", help="Retry the failed items (the only kind of retry)."),
    code: str | None = typer.Option(None, help="Only failures with these error codes (comma-separated)."),
) -> None:
    """Queue the failed items of a job again, as a new attempt; succeeded items are kept."""
    codes = [part.strip() for part in code.split(",") if part.strip()] if code else []
    client = Client(get_settings())
    job_id = guard(lambda: client.resolve(job_id))
    count = guard(lambda: client.retry_failed(job_id, codes))
    console.print(f"queued {count} failed items of job {job_id} again")


@app.command()
def reconcile() -> None:
    """One reconciler pass: re-dispatch expired leases and lost messages, finalize finished jobs."""
    from jobs.reconcile import reconcile as run_pass

    report = run_pass(get_settings())
    console.print(
        f"leases expired: {report.expired}; items re-dispatched: {report.redispatched}; "
        f"jobs finalized: {len(report.finalized)}; jobs recounted: {len(report.repaired)}"
    )


@app.command()
def repair(
    job_id: str = typer.Argument(..., help="The job whose counters to recount from its items."),
) -> None:
    """Recount a job's counters from its items, fix its row, and finalize it if every item has ended."""
    from jobs.repair import repair_job

    console.print(repair_job(get_settings(), job_id).describe(), markup=False)


@app.command()
def metrics(
    serve: int = typer.Option(0, help="Serve /metrics on this port instead of printing once."),
    address: str = typer.Option("127.0.0.1", help="Address to serve on (0.0.0.0: every interface)."),
) -> None:
    """Queue depth and job / item counters in Prometheus text format (what Flower does not export)."""
    from jobs.metrics import render, serve_forever

    settings = get_settings()
    if serve:
        serve_forever(settings, serve, address)
    else:
        sys.stdout.write(render(settings))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the database up."""
    from jobs.db import upgrade

    upgrade(get_settings().resolved_database_url, revision)
    console.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision; 'base' drops the tables."),
) -> None:
    """Migrate the database down."""
    from jobs.db import downgrade

    downgrade(get_settings().resolved_database_url, revision)
    console.print(f"database at {revision}")
