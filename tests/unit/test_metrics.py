"""The metrics page as Prometheus reads it, from real jobs on SQLite and the folder broker, and the Grafana
dashboard's queries against what the project and Flower export."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from jobs.api import Client
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.metrics import JobMetrics, metrics_server, render
from jobs.models import Job
from jobs.settings import Settings
from jobs.submit import ItemSpec
from tests.helpers import embedded_settings, write_photos
from workers.chunk import run_chunk
from workers.embedded import EmbeddedRunner

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "ovis-batch.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class KeptChunks:
    """A dispatcher that keeps chunks for the test to run (or not)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[JobKind, str, int, int]] = []

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        self.chunks.append((kind, job_id, start, stop))


def scrape(settings: Settings) -> Samples:
    """Every sample of the metrics page, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(render(settings))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value."""
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def night(tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    """A caption job half done with one bad image, a generate job done, and one queued for an hour."""
    settings = embedded_settings(tmp_path / "home", chunk_size=4, read_ahead=False)
    runner = EmbeddedRunner(settings)
    photos = tmp_path / "home" / "photos"
    write_photos(photos, count=5)
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")

    kept = KeptChunks()
    caption = Client(settings, kept).submit(JobKind.CAPTION, str(photos))
    done = Client(settings, kept).submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a red fox")])
    for kind, job_id, start, stop in kept.chunks:
        if job_id == done or start == 0:
            run_chunk(runner.runtime, kind, job_id, start, stop)
    # Published to the folder broker: one chunk message waits in ovis.generate.
    waiting = Client(settings).submit_items(JobKind.GENERATE, [ItemSpec(key=k, text=k) for k in "xyz"])
    with session_scope(settings.resolved_database_url) as session:
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        session.execute(update(Job).where(Job.id == waiting).values(created_at=an_hour_ago))
    return settings, {"caption": caption, "done": done, "waiting": waiting}


def test_jobs_items_failures_and_queues_of_a_night(night: tuple[Settings, dict[str, str]]) -> None:
    settings, _ = night
    samples = scrape(settings)

    assert value(samples, "ovis_batch_database_up") == 1
    assert value(samples, "ovis_batch_broker_up") == 1
    assert value(samples, "ovis_batch_jobs", kind="caption", status="running") == 1
    assert value(samples, "ovis_batch_jobs", kind="generate", status="succeeded") == 1
    assert value(samples, "ovis_batch_jobs", kind="generate", status="queued") == 1
    assert value(samples, "ovis_batch_jobs", kind="edit", status="running") == 0
    # The caption job: 6 images, the first chunk of 4 ran (the broken one failed), 2 left.
    assert value(samples, "ovis_batch_open_job_items", kind="caption", status="succeeded") == 3
    assert value(samples, "ovis_batch_open_job_items", kind="caption", status="failed") == 1
    assert value(samples, "ovis_batch_open_job_items", kind="caption", status="queued") == 2
    # A finished job's items are not left to do; the waiting job's are.
    assert value(samples, "ovis_batch_open_job_items", kind="generate", status="queued") == 3
    assert value(samples, "ovis_batch_open_job_items", kind="generate", status="succeeded") == 0
    assert value(samples, "ovis_batch_open_job_failures", kind="caption", code="invalid_image") == 1
    assert value(samples, "ovis_batch_items_succeeded_total", kind="caption") == 3
    assert value(samples, "ovis_batch_items_succeeded_total", kind="generate") == 1
    assert value(samples, "ovis_batch_items_reused_total", kind="caption") == 0
    assert value(samples, "ovis_batch_oldest_queued_job_age_seconds", kind="generate") == pytest.approx(
        3600, abs=600
    )
    assert value(samples, "ovis_batch_oldest_queued_job_age_seconds", kind="caption") == 0
    assert value(samples, "ovis_batch_queue_depth", queue="ovis.generate") == 1
    assert value(samples, "ovis_batch_queue_depth", queue="ovis.caption") == 0
    assert value(samples, "ovis_batch_messages_unacked") == 0


def test_labels_are_bounded_sets_never_job_ids(night: tuple[Settings, dict[str, str]]) -> None:
    settings, job_ids = night
    labels = {label for (_, pairs) in scrape(settings) for label in pairs}

    assert {name for name, _ in labels} <= {"kind", "status", "queue", "code", "worker"}
    assert not {text for _, text in labels} & set(job_ids.values())
    # A worker is named for its host and GPU, never its process: restarts add no names.
    workers = {text for name, text in labels if name == "worker"}
    assert workers == {f"ovis@{socket.gethostname()}"}


def test_gpu_seconds_per_kind_and_items_per_worker(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, fake_ms_per_item=5.0, read_ahead=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {n}\n" for n in range(6)))
    job_id = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts)).id

    samples = scrape(settings)
    report = Client(settings).status(job_id)
    spent = value(samples, "ovis_batch_gpu_seconds_total", kind="generate")
    assert spent == pytest.approx(report.gpu_seconds) and spent >= 6 * 0.005
    assert value(samples, "ovis_batch_gpu_seconds_total", kind="caption") == 0
    worker = f"ovis@{socket.gethostname()}"
    assert value(samples, "ovis_batch_worker_items_total", worker=worker, kind="generate") == 6
    assert value(samples, "ovis_batch_worker_gpu_seconds_total", worker=worker, kind="generate") == (
        pytest.approx(spent)
    )


def test_a_broker_that_does_not_answer_leaves_the_database_figures(
    night: tuple[Settings, dict[str, str]],
) -> None:
    settings, _ = night
    away = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})

    samples = scrape(away)

    assert value(samples, "ovis_batch_broker_up") == 0
    assert not [name for name, _ in samples if name == "ovis_batch_queue_depth"]
    assert value(samples, "ovis_batch_jobs", kind="caption", status="running") == 1


def test_a_database_that_does_not_answer_leaves_the_broker_figures(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")

    samples = scrape(settings)

    assert value(samples, "ovis_batch_database_up") == 0
    assert value(samples, "ovis_batch_broker_up") == 1
    assert not [name for name, _ in samples if name == "ovis_batch_jobs"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The metrics endpoint on a free port; yields its base URL."""
    with metrics_server(embedded_settings(tmp_path), 0) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        host, port = httpd.server_address[:2]
        assert host == "127.0.0.1", "the endpoint listens on all interfaces unless told otherwise"
        yield f"http://{host}:{port}"
        httpd.shutdown()
        thread.join()


def test_endpoint_answers_metrics_and_a_page_that_links_them(server: str) -> None:
    index = requests.get(f"{server}/", timeout=10)
    metrics = requests.get(f"{server}/metrics", timeout=10)

    assert index.status_code == 200 and "href='/metrics'" in index.text
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'ovis_batch_jobs{kind="caption",status="queued"} 0.0' in metrics.text
    assert requests.get(f"{server}/jobs", timeout=10).status_code == 404


# -- the Grafana dashboard -----------------------------------------------------------------------------------
#: Words of PromQL that are not metric names.
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)


def exported_samples(families: dict[str, tuple[str, set[str]]]) -> dict[str, set[str]]:
    """Sample names (with their labels) of metric families given as name -> (type, labels)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    samples: dict[str, set[str]] = {}
    for name, (kind, labels) in families.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        for suffix in suffixes.get(kind, ("",)):
            samples[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return samples


def project_metrics(tmp_path: Path) -> dict[str, set[str]]:
    """What the project's collector exports, read from the collector itself."""
    families = {
        family.name: (family.type, {label for sample in family.samples for label in sample.labels})
        for family in JobMetrics(embedded_settings(tmp_path)).collect()
    }
    # A family with no samples (no failures, no worker has recorded anything yet) still has its labels.
    families["ovis_batch_open_job_failures"] = ("gauge", {"kind", "code"})
    for name in ("ovis_batch_worker_items", "ovis_batch_worker_gpu_seconds"):
        families[name] = ("counter", {"worker", "kind"})
    return exported_samples(families)


#: The metric classes flower.events imports, by the name it gives them.
FLOWER_TYPES = {"PrometheusCounter": "counter", "Gauge": "gauge", "Histogram": "histogram"}


def flower_metrics() -> dict[str, set[str]]:
    """What Flower exports, read from its source: the Counter / Gauge / Histogram calls of flower.events."""
    spec = importlib.util.find_spec("flower.events")
    assert spec is not None and spec.origin is not None
    families: dict[str, tuple[str, set[str]]] = {}
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            kind = FLOWER_TYPES.get(node.func.id)
            if kind and len(node.args) >= 3 and isinstance(node.args[2], ast.List):
                labels = {ast.literal_eval(element) for element in node.args[2].elts}
                families[ast.literal_eval(node.args[0])] = (kind, labels)
    assert "flower_worker_online" in families, "Flower's metrics were not found in its source"
    return exported_samples(families)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, rows' panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels += panel.get("panels", [])
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names its matchers use) of every series selector in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings may hold anything
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = match.groups()
        if call or name in PROMQL_WORDS or re.fullmatch(r"\d+(e\d+)?|Inf|NaN", name):
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def test_dashboard_queries_use_only_metrics_and_labels_that_exist(tmp_path: Path) -> None:
    exported = project_metrics(tmp_path) | flower_metrics()
    queries = dashboard_queries()
    used: set[str] = set()

    assert queries, "the dashboard has no queries"
    for title, expr in queries:
        found = selectors(expr)
        for name, labels in found:
            assert name in exported, f"panel {title!r} queries {name}, which nothing exports"
            unknown = labels - exported[name]
            assert not unknown, f"panel {title!r}: {name} has no labels {unknown}"
            used.add(name)
        grouped = {
            label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")
        }
        available = set().union(*(exported[name] for name, _ in found))
        assert grouped <= available, (
            f"panel {title!r} groups by labels its metrics lack: {grouped - available}"
        )
    shown = {
        "flower_events_total",
        "flower_task_runtime_seconds_bucket",
        "flower_worker_online",
        "flower_worker_number_of_currently_executing_tasks",
        "ovis_batch_items_succeeded_total",
        "ovis_batch_open_job_items",
        "ovis_batch_open_job_failures",
        "ovis_batch_jobs",
        "ovis_batch_queue_depth",
        "ovis_batch_oldest_queued_job_age_seconds",
    }
    assert shown <= used, f"the dashboard does not show {sorted(shown - used)}"


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel.get("type") != "row"]

    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, f"panel {panel['title']!r} uses an unknown datasource"
        assert all(target["datasource"]["uid"] in uids for target in panel.get("targets", []))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
