"""The `ovis-batch` console script: the producer commands (jobs.cli) and the worker commands, composed here.

It stands on top of both sides, so that jobs never imports workers. The worker commands import the modules
they use when they run: the producer commands start without the model stack or the worker's Celery app.
`python -m workers.cli` is the same script (the GPU launcher starts its children so).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jobs import cli as producer
from jobs.api import JobReport
from jobs.errors import OvisBatchError
from jobs.lifecycle import JobKind, JobStatus
from jobs.logs import configure_logging
from jobs.settings import Settings, get_settings
from jobs.terminal import console, fail, guard

worker_app = typer.Typer()
run_app = typer.Typer(
    help="Submit and process a job in this process (no servers needed).", no_args_is_help=True
)
worker_app.add_typer(run_app, name="run")

app = typer.Typer(
    help="Batch captioning, text-to-image and editing with Ovis-U1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.callback()(producer.main_options)
app.add_typer(producer.app)
app.add_typer(worker_app)


# -- run: a job processed in this process ------------------------------------------------------------------
def _run(
    kind: JobKind,
    source: str,
    params: dict[str, Any],
    priority: int,
    output: str | None,
    skip: bool,
    notify_url: str | None,
) -> None:
    from jobs.notify import deliver_notification

    settings = get_settings()
    if output:
        settings = settings.model_copy(update={"storage_url": output})
    if notify_url:
        settings = settings.model_copy(update={"notify_url": notify_url})
    report = run_embedded(settings, kind, source, params, skip_existing=skip)
    _print_outcome(report)
    # No reconciler runs here: the first attempt now; one that fails is left to `ovis-batch reconcile`.
    if report.notification is not None:
        state = deliver_notification(settings, report.id)
        console.print(f"notification: {state or 'pending'}", markup=False)


def run_embedded(
    settings: Settings, kind: JobKind, source: str, params: dict[str, Any], *, skip_existing: bool = False
) -> JobReport:
    """Run one job in this process with a progress bar; return its final report."""
    from gpu_model import BackendLoadError
    from workers.embedded import EmbeddedRunner

    runner = EmbeddedRunner(settings)
    try:
        runner.runtime.load()
    except BackendLoadError as exc:
        raise fail(str(exc)) from None
    with _progress() as progress:
        task = progress.add_task(f"{kind.value}", total=None)

        def show(report: JobReport) -> None:
            progress.update(task, total=report.total, completed=report.done)

        return guard(
            lambda: runner.run(kind, source, params=params, on_progress=show, skip_existing=skip_existing)
        )


producer.register_kinds(run_app, _run)


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


# -- processes ---------------------------------------------------------------------------------------------
@worker_app.command()
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

    settings = get_settings()
    configure_logging(loglevel, settings.log_format)
    devices = guard(lambda: visible_gpus(gpus))
    if devices:
        child_args = ["--queues", queues, "--loglevel", loglevel]
        raise typer.Exit(supervise(devices, child_args))
    from workers.celery_app import app as celery_app

    names = [q.strip() for q in queues.split(",") if q.strip()] or worker_queues(settings)
    concurrency = concurrency or settings.concurrency
    if concurrency <= 1:
        # Load the model before Celery starts, so a missing model fails here with its fix, not at a job.
        from gpu_model import BackendLoadError
        from workers.runtime import WorkerRuntime, consumed_kinds

        try:
            WorkerRuntime.current().load(consumed_kinds(settings, names))
        except BackendLoadError as exc:
            raise fail(str(exc)) from None
    # Loading a 3B model takes longer than Celery's default 4 s allowance for a new child process.
    celery_app.conf.worker_proc_alive_timeout = 900
    argv = celery_argv(node=node or node_name(None), queues=names, concurrency=concurrency, loglevel=loglevel)
    try:
        celery_app.worker_main(argv)
    except OvisBatchError as exc:
        raise fail(str(exc)) from None


@worker_app.command()
def ping(
    node: list[str] = typer.Option(
        [], help="Node to ask; repeat for several. Default: the nodes this host runs (see --gpus)."
    ),
    gpus: str = typer.Option(
        "auto",
        help="Without --node: ask ovis-gpuN@host per GPU this selects, or ovis@host without GPUs.",
    ),
    timeout: float = typer.Option(5.0, help="Seconds to wait for answers."),
) -> None:
    """Liveness check: exit 0 when every worker asked answers and is making progress (idle, or busy with a
    chunk that progresses); exit 1 naming each one that is stalled or did not answer."""
    from jobs.broker import make_celery
    from workers.launcher import node_name, visible_gpus
    from workers.watchdog import ask_health, describe

    nodes = list(node) or [node_name(gpu) for gpu in guard(lambda: visible_gpus(gpus))] or [node_name(None)]
    celery = make_celery(get_settings())
    try:
        live, lines = describe(ask_health(celery, nodes, timeout), timeout)
    finally:
        celery.close()
    for line in lines:
        console.print(line, markup=False)
    if not live:
        raise fail("not every worker is live: " + "; ".join(lines))


@worker_app.command()
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
        raise fail(
            "Flower without authentication may only listen on localhost: set "
            "OVIS_BATCH_FLOWER_BASIC_AUTH=user:password to listen on " + address
        )
    if auth and ":" not in auth:
        raise fail("OVIS_BATCH_FLOWER_BASIC_AUTH must be user:password")
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


@worker_app.command()
def demo(out: str = typer.Option("demo-output", help="Folder for the demo's inputs and outputs.")) -> None:
    """Caption, edit and generate from scikit-image's sample photos on the tiny random-weight model."""
    from jobs.demo import run_demo

    guard(lambda: run_demo(out, console, run_embedded))


def _start() -> None:
    # Warnings and errors of every command in the configured format; `worker` logs from its --loglevel.
    configure_logging("WARNING", get_settings().log_format)
    app()


def main() -> None:
    """The `ovis-batch` console script: errors a user can act on end in one line, not a traceback."""
    try:
        guard(_start)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
