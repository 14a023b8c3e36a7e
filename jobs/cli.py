"""The `ovis-batch` command line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from jobs.api import Client, JobReport
from jobs.errors import OvisBatchError
from jobs.export import ExportOptions, ExportReport, write_export
from jobs.export_destination import format_of
from jobs.lifecycle import JobKind, JobStatus
from jobs.settings import Settings, get_settings
from storage import StorageError

app = typer.Typer(
    help="Batch captioning, text-to-image and editing with Ovis-U1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
submit_app = typer.Typer(help="Submit a job to the workers.", no_args_is_help=True)
run_app = typer.Typer(
    help="Submit and process a job in this process (no servers needed).", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(submit_app, name="submit")
app.add_typer(run_app, name="run")
app.add_typer(db_app, name="db")

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(2)


def _missing_schema(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """Whether the database answered that the project's tables do not exist (never migrated)."""
    return type(exc.orig).__name__ == "UndefinedTable" or "no such table" in str(exc.orig)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run `fn`; turn the errors a user can act on into one line and exit status 2."""
    try:
        return fn()
    except (OvisBatchError, StorageError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
        if _missing_schema(exc):
            raise _fail(
                "the database has no ovis-batch tables yet: run `ovis-batch db upgrade` once (and after "
                "every upgrade of ovis-batch)"
            ) from None
        if isinstance(exc, sqlalchemy.exc.ProgrammingError):
            raise
        reason = str(exc.orig).strip().splitlines()[0]
        raise _fail(f"cannot reach a service ({exc.__class__.__name__}): {reason}") from None
    except (kombu.exceptions.OperationalError, OSError) as exc:
        # A server that is down or refuses the credentials: say which, not the URL (it may hold a password).
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _fail(f"cannot reach a service ({exc.__class__.__name__}): {reason}") from None


# -- submit / run: one definition of each kind's options, used by both ------------------------------------
InputOpt = typer.Option(
    ..., "--input", "-i", help="Folder, s3:// prefix, prompt .txt or .jsonl/.csv/.parquet"
)
SeedOpt = typer.Option(42, help="Job seed; each item's seed derives from it and the item's id.")
PriorityOpt = typer.Option(0, min=0, max=9, help="0 (lowest) to 9: higher runs first.")
OutputOpt = typer.Option(None, "--output", help="Storage URL for outputs (default: OVIS_BATCH_STORAGE_URL).")
SkipOpt = typer.Option(
    False,
    "--skip-existing",
    help="Reuse an earlier job's output where it is the one this item would get (same input bytes, prompt, "
    "parameters, seed, model and output location); compute only the rest.",
)


def _drop_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _register(
    target: typer.Typer, action: Callable[[JobKind, str, dict[str, Any], int, str | None, bool], None]
) -> None:
    @target.command("caption")
    def caption(
        input: str = InputOpt,
        prompt: str | None = typer.Option(None, help="Question put to the model for every image."),
        max_new_tokens: int | None = typer.Option(None, help="Longest caption, in tokens."),
        temperature: float = typer.Option(0.0, help="0 = greedy decoding."),
        seed: int = SeedOpt,
        priority: int = PriorityOpt,
        output: str | None = OutputOpt,
        skip_existing: bool = SkipOpt,
    ) -> None:
        """Caption images."""
        params = _drop_none(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        action(JobKind.CAPTION, input, params, priority, output, skip_existing)

    @target.command("generate")
    def generate(
        input: str = InputOpt,
        width: int | None = typer.Option(None, help="Output width (multiple of 16)."),
        height: int | None = typer.Option(None, help="Output height (multiple of 16)."),
        steps: int | None = typer.Option(None, help="Sampling steps."),
        txt_cfg: float | None = typer.Option(None, help="Text guidance scale."),
        seed: int = SeedOpt,
        priority: int = PriorityOpt,
        output: str | None = OutputOpt,
        skip_existing: bool = SkipOpt,
    ) -> None:
        """Render images from prompts."""
        params = _drop_none(width=width, height=height, steps=steps, txt_cfg=txt_cfg, seed=seed)
        action(JobKind.GENERATE, input, params, priority, output, skip_existing)

    @target.command("edit")
    def edit(
        input: str = InputOpt,
        steps: int | None = typer.Option(None, help="Sampling steps."),
        img_cfg: float | None = typer.Option(None, help="Image guidance scale."),
        txt_cfg: float | None = typer.Option(None, help="Text guidance scale."),
        seed: int = SeedOpt,
        priority: int = PriorityOpt,
        output: str | None = OutputOpt,
        skip_existing: bool = SkipOpt,
    ) -> None:
        """Edit images following instructions (a manifest of image + instruction)."""
        params = _drop_none(steps=steps, img_cfg=img_cfg, txt_cfg=txt_cfg, seed=seed)
        action(JobKind.EDIT, input, params, priority, output, skip_existing)


def _submit(
    kind: JobKind, source: str, params: dict[str, Any], priority: int, output: str | None, skip: bool
) -> None:
    client = Client(get_settings())
    job_id = _guard(
        lambda: client.submit(
            kind, source, params=params, priority=priority, output_url=output, skip_existing=skip
        )
    )
    report = client.status(job_id)
    # Outputs reused with --skip-existing are found by the workers, and counted as skipped in `status`.
    console.print(f"submitted {kind.value} job [bold]{job_id}[/bold] with {report.total} items")
    print(job_id)


def _run(
    kind: JobKind, source: str, params: dict[str, Any], priority: int, output: str | None, skip: bool
) -> None:
    settings = get_settings()
    if output:
        settings = settings.model_copy(update={"storage_url": output})
    report = run_embedded(settings, kind, source, params, skip_existing=skip)
    _print_outcome(report)


def run_embedded(
    settings: Settings, kind: JobKind, source: str, params: dict[str, Any], *, skip_existing: bool = False
) -> JobReport:
    """Run one job in this process with a progress bar; return its final report."""
    # The CLI is where producer and worker meet: only the embedded mode imports the worker side.
    from gpu_model import BackendLoadError
    from workers.embedded import EmbeddedRunner

    runner = EmbeddedRunner(settings)
    try:
        runner.runtime.load()
    except BackendLoadError as exc:
        raise _fail(str(exc)) from None
    with _progress() as progress:
        task = progress.add_task(f"{kind.value}", total=None)

        def show(report: JobReport) -> None:
            progress.update(task, total=report.total, completed=report.done)

        return _guard(
            lambda: runner.run(kind, source, params=params, on_progress=show, skip_existing=skip_existing)
        )


_register(submit_app, _submit)
_register(run_app, _run)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _print_outcome(report: JobReport) -> None:
    colour = "green" if report.status == JobStatus.SUCCEEDED.value else "yellow"
    console.print(
        f"job {report.id}: [{colour}]{report.status}[/{colour}] "
        f"({report.succeeded} succeeded, {report.failed} failed, {report.cancelled} cancelled)"
    )
    console.print(f"outputs: {report.output_url.rstrip('/')}/{report.id}/", markup=False)
    if report.export_url:
        console.print(f"results: {report.export_url}", markup=False)


# -- watching and managing ---------------------------------------------------------------------------------
@app.command()
def status(
    job_id: str,
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow progress until the job ends."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    interval: float = typer.Option(1.0, help="Seconds between refreshes with --watch."),
) -> None:
    """Show a job's progress: counters, rate, ETA and failures by error code (--watch: live)."""
    from jobs.progress import eta_seconds, overall_rate
    from jobs.progress import watch as watch_job

    client = Client(get_settings())
    report: JobReport = _guard(lambda: client.status(job_id))
    if as_json:
        rate = overall_rate(report)
        errors = client.errors_by_code(job_id) if report.failed else {}
        data = report.as_dict() | {"errors": errors, "rate": rate, "eta_s": eta_seconds(report, rate)}
        print(json.dumps(data))
        return
    if watch and not JobStatus(report.status).final:
        report = watch_job(client, job_id, console, interval)
    _print_report(report, client.errors_by_code(job_id) if report.failed else {})


def _rate_text(report: JobReport) -> str:
    from jobs.progress import eta_seconds, format_duration, overall_rate

    rate = overall_rate(report)
    if rate is None:
        return "-"
    eta = "" if JobStatus(report.status).final else f", ETA {format_duration(eta_seconds(report, rate))}"
    return f"{rate:,.1f} items/s{eta}"


def _results_text(report: JobReport) -> str:
    if report.export_url:
        return report.export_url
    if report.export_pending:
        why = f": last try failed, {report.export_error}" if report.export_error else ""
        return f"export pending{why} (the reconciler writes it)"
    return "-"


def _print_report(report: JobReport, errors: dict[str, int]) -> None:
    table = Table(show_header=False, box=None)
    for name, value in [
        ("job", report.id),
        ("kind", report.kind),
        ("status", report.status),
        ("priority", report.priority),
        ("items", f"{report.total} so far, the source is still read" if report.submitting else report.total),
        ("queued", report.queued),
        ("running", report.running),
        ("succeeded", report.succeeded),
        ("failed", report.failed),
        ("cancelled", report.cancelled),
        ("skipped", report.skipped),
        ("rate", _rate_text(report)),
        ("created", report.created_at),
        ("started", report.started_at),
        ("finished", report.finished_at),
        ("outputs", report.output_url),
        ("results", _results_text(report)),
    ]:
        table.add_row(name, str(value if value is not None else "-"))
    for code, count in sorted(errors.items()):
        table.add_row(f"  {code}", str(count))
    console.print(table)


@app.command("list")
def list_jobs(
    status: str | None = typer.Option(None, help="Only jobs in these states (comma-separated)."),
    kind: str | None = typer.Option(None, help="Only jobs of this kind."),
    since: str | None = typer.Option(None, help="Only jobs created since: 90m, 12h, 7d or an ISO date."),
    source: str | None = typer.Option(None, help="Only jobs whose source contains this text."),
    limit: int = typer.Option(50, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List jobs, newest first."""
    from jobs.progress import parse_since

    states = [part.strip() for part in status.split(",") if part.strip()] if status else None
    created = _guard(lambda: parse_since(since)) if since else None
    reports = Client(get_settings()).list(status=states, kind=kind, since=created, source=source, limit=limit)
    if as_json:
        for report in reports:
            print(json.dumps(report.as_dict()))
        return
    table = Table("kind", "status", "prio", "done", "failed", "created")
    table.add_column("job", no_wrap=True, min_width=32)
    for r in reports:
        table.add_row(
            r.kind,
            r.status,
            str(r.priority),
            f"{r.done}/{r.total}",
            str(r.failed),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "-",
            r.id,
        )
    console.print(table)


@app.command()
def export(
    job_id: str,
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        help="A file, or a folder: a path ending in / or naming an existing folder, s3://bucket/prefix/ "
        "(README, Outputs). txt without --out: a caption file beside each image.",
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
) -> None:
    """Export a job's results (also while it runs, as far as it has come)."""
    states = tuple(part.strip() for part in status.split(",") if part.strip()) if status else ()
    settings = get_settings()

    def run() -> ExportReport:
        options = ExportOptions(fmt=fmt or format_of(out), statuses=states, column=column)
        return write_export(settings, job_id, out, options)

    report: ExportReport = _guard(run)
    console.print(report.describe(), markup=False)


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a job: nothing new starts; running micro-batches finish."""
    report = _guard(lambda: Client(get_settings()).cancel(job_id))
    console.print(f"job {job_id}: {report.status}")


@app.command()
def resume(
    job_id: str,
    release_running: bool = typer.Option(
        False, "--release-running", help="Also take back items leased to workers known to be gone."
    ),
) -> None:
    """Re-dispatch every item of a job that has not ended (queued, expired leases, cancelled)."""
    count = _guard(lambda: Client(get_settings()).resume(job_id, release_running=release_running))
    console.print(f"re-dispatched {count} items of job {job_id}")


@app.command()
def retry(
    job_id: str,
    failed: bool = typer.Option(True, "--failed", help="Retry the failed items (the only kind of retry)."),
    code: str | None = typer.Option(None, help="Only failures with these error codes (comma-separated)."),
) -> None:
    """Queue the failed items of a job again, as a new attempt; succeeded items are kept."""
    codes = [part.strip() for part in code.split(",") if part.strip()] if code else []
    count = _guard(lambda: Client(get_settings()).retry_failed(job_id, codes))
    console.print(f"queued {count} failed items of job {job_id} again")


# -- processes ---------------------------------------------------------------------------------------------
@app.command()
def worker(
    gpus: str = typer.Option(
        "auto", help="'auto'/'all' (one worker per GPU), 'none' (one CPU worker), or 0,1,..."
    ),
    concurrency: int = typer.Option(
        0, help="Processes of a CPU worker (prefork; 1: this process). Default: OVIS_BATCH_CONCURRENCY."
    ),
    queues: str = typer.Option("", help="Comma-separated queues (default: every kind's), e.g. ovis.caption."),
    node: str = typer.Option("", help="Celery node name (default: ovis@host, ovis-gpuN@host)."),
    loglevel: str = typer.Option("INFO", help="Log level."),
) -> None:
    """Start workers: the model is loaded before any message is consumed."""
    from jobs.broker import worker_queues
    from workers.launcher import celery_argv, node_name, supervise, visible_gpus

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    devices = _guard(lambda: visible_gpus(gpus))
    if devices:
        child_args = ["--queues", queues, "--loglevel", loglevel]
        raise typer.Exit(supervise(devices, child_args))
    from workers.celery_app import app as celery_app

    names = [q.strip() for q in queues.split(",") if q.strip()] or worker_queues(settings)
    concurrency = concurrency or settings.concurrency
    if concurrency <= 1:
        # Load the model before Celery starts, so a missing model fails here with its fix, not at a job.
        from gpu_model import BackendLoadError
        from workers.runtime import WorkerRuntime

        try:
            WorkerRuntime.current().load()
        except BackendLoadError as exc:
            raise _fail(str(exc)) from None
    # Loading a 3B model takes longer than Celery's default 4 s allowance for a new child process.
    celery_app.conf.worker_proc_alive_timeout = 900
    argv = celery_argv(node=node or node_name(None), queues=names, concurrency=concurrency, loglevel=loglevel)
    try:
        celery_app.worker_main(argv)
    except OvisBatchError as exc:
        raise _fail(str(exc)) from None


@app.command()
def ping(
    node: str = typer.Option("", help="Node to ask (default: every ovis node on this host)."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for answers."),
) -> None:
    """Liveness check for a supervisor: exit 0 when the worker(s) on this host answer."""
    import socket

    from jobs.broker import make_celery

    celery = make_celery(get_settings())
    replies = celery.control.ping(destination=[node] if node else None, timeout=timeout)
    names = [name for reply in replies for name in reply]
    if not node:
        names = [name for name in names if name.endswith("@" + socket.gethostname())]
    if not names:
        raise _fail(f"no worker answered within {timeout}s")
    console.print("alive: " + ", ".join(sorted(names)))


@app.command()
def reconcile() -> None:
    """One reconciler pass: re-dispatch expired leases and lost messages, finalize finished jobs."""
    from jobs.reconcile import reconcile as run_pass

    report = run_pass(get_settings())
    console.print(
        f"leases expired: {report.expired}; items re-dispatched: {report.redispatched}; "
        f"jobs finalized: {len(report.finalized)}"
    )


@app.command()
def flower(
    address: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(0, help="Port (default: OVIS_BATCH_FLOWER_PORT)."),
) -> None:
    """Start Flower on the project's Celery app, with basic auth from OVIS_BATCH_FLOWER_BASIC_AUTH."""
    import ipaddress
    import os

    settings = get_settings()
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    try:
        loopback = address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: only "localhost" counts as local
        loopback = False
    if not auth and not loopback:
        raise _fail(
            "Flower without authentication may only listen on localhost: set "
            "OVIS_BATCH_FLOWER_BASIC_AUTH=user:password to listen on " + address
        )
    if auth and ":" not in auth:
        raise _fail("OVIS_BATCH_FLOWER_BASIC_AUTH must be user:password")
    env = dict(os.environ)
    if auth:
        # Through the environment, not argv: the password stays out of the process list.
        env["FLOWER_BASIC_AUTH"] = auth
    else:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--address={address}",
        f"--port={port or settings.flower_port}",
    ]
    os.execve(sys.executable, argv, env)


@app.command()
def metrics(
    serve: int = typer.Option(0, help="Serve /metrics on this port instead of printing once."),
) -> None:
    """Queue depth and job / item counters in Prometheus text format (what Flower does not export)."""
    from jobs.metrics import render, serve_forever

    settings = get_settings()
    if serve:
        serve_forever(settings, serve)
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


@app.command()
def demo(out: str = typer.Option("demo-output", help="Folder for the demo's inputs and outputs.")) -> None:
    """Caption, edit and generate from scikit-image's sample photos on the tiny random-weight model."""
    from jobs.demo import run_demo

    _guard(lambda: run_demo(out, console))


def main() -> None:
    """The `ovis-batch` console script: errors a user can act on end in one line, not a traceback."""
    try:
        _guard(app)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # the GPU launcher starts its children as `python -m jobs.cli`
    main()
