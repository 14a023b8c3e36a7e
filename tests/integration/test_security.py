"""Security with real processes and services: JSON-only messages, confined inputs, secrets kept out of the
database, the broker and the logs, Flower behind authentication, password-protected Redis and PostgreSQL,
TLS URLs."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import redis
from kombu import Connection
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from jobs.broker import broker_priority, make_celery
from jobs.db import alembic_config, get_engine
from jobs.settings import Settings
from tests.helpers import sample_photo
from tests.plugins.services import ThrowawayPostgres, ThrowawayRedis, libpq_dsn
from tests.plugins.workers import BIN, Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def _job_status(stack: Stack, job_id: str) -> dict[str, Any]:
    return dict(json.loads(stack.cli("status", job_id, "--json").stdout))


def _wait_succeeded(stack: Stack, job_id: str, timeout: float = 60) -> dict[str, Any]:
    wait_for(
        lambda: _job_status(stack, job_id)["status"] not in ("queued", "running"),
        timeout,
        f"job {job_id} did not end",
    )
    report = _job_status(stack, job_id)
    assert report["status"] == "succeeded", report
    return report


def _prompts(stack: Stack, count: int) -> str:
    path = stack.home / f"prompts-{uuid.uuid4().hex[:6]}.txt"
    path.write_text("".join(f"a lighthouse at dusk, take {i}\n" for i in range(count)))
    return str(path)


# -- messages ------------------------------------------------------------------------------------------------
class _Exploit:
    """Unpickling this creates a file: proof that a worker ran code from a message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickle_messages_are_refused_and_the_worker_keeps_working(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker("--gpus", "none")
    queue = f"{stack.env['OVIS_BATCH_QUEUE']}.generate"
    as_task, as_message = stack.home / "ran-from-task", stack.home / "ran-from-message"
    # A task message in Celery's own format, serialized with pickle, as an attacker on the broker would send.
    settings = Settings(broker_url=stack.env["OVIS_BATCH_BROKER_URL"], queue=stack.env["OVIS_BATCH_QUEUE"])
    app = make_celery(settings)
    app.send_task("ovis.generate", args=[_Exploit(as_task), 0, 1], queue=queue, serializer="pickle")
    app.close()
    # And a bare kombu message with a pickle body straight into the queue's list.
    with Connection(stack.env["OVIS_BATCH_BROKER_URL"]) as connection:
        producer = connection.Producer()
        producer.publish(_Exploit(as_message), exchange="", routing_key=queue, serializer="pickle")
    refusals = ("Received invalid task message", "Can't decode message body")  # the task, the bare message
    wait_for(
        lambda: all(refusal in worker.text() for refusal in refusals),
        30,
        f"the worker did not refuse both pickle messages:\n{worker.text()[-3000:]}",
    )
    job_id = stack.cli("submit", "generate", "--input", _prompts(stack, 3)).stdout.split()[-1]
    _wait_succeeded(stack, job_id)
    assert not as_task.exists() and not as_message.exists(), "a pickle payload ran in the worker"
    assert worker.process.poll() is None
    lines = [line for line in worker.text().splitlines() if any(refusal in line for refusal in refusals)]
    print("SECURITY pickle: both messages refused, neither ran, a JSON job completed after them:")
    for line in lines:
        print(f"  {line.split(': ', 1)[-1][:150]}")


# -- inputs --------------------------------------------------------------------------------------------------
def test_inputs_outside_the_roots_are_refused_at_submit(stack: Stack) -> None:
    bucket = stack.bucket
    refused = {
        "path traversal": "../../../../../../../../etc/passwd",
        "absolute path outside": "/etc/passwd",
        "file URL": "file:///etc/shadow",
        "other bucket": "s3://someone-elses-bucket/inputs/cat.jpg",
        "bucket outside the prefix": f"s3://{bucket}/outputs/cat.jpg",
        "prefix look-alike": f"s3://{bucket}/inputs-private/cat.jpg",
        "dot segments in a key": f"s3://{bucket}/inputs/../outputs/cat.jpg",
        "http to loopback": "http://127.0.0.1:6379/cat.jpg",
        "cloud metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https elsewhere": "https://example.com/cat.jpg",
    }
    outcomes: dict[str, str] = {}
    for case, image in refused.items():
        manifest = stack.home / f"{case.replace(' ', '-')}.jsonl"
        manifest.write_text(json.dumps({"id": "x", "image": image, "instruction": "make it red"}) + "\n")
        result = stack.cli("submit", "edit", "--input", str(manifest), check=False)
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 2, (case, output)
        assert "outside the allowed input roots" in output and "OVIS_BATCH_INPUT_ROOTS" in output, (
            case,
            output,
        )
        outcomes[case] = output
    assert "0 jobs" in _job_count(stack), "a refused submission left a job behind"
    print(f"SECURITY inputs: {len(refused)} inputs outside the roots refused at submit (input_not_allowed)")
    print(f"  e.g. {outcomes['path traversal'][:200]}")


def test_a_source_that_is_not_storage_is_refused_with_what_is_accepted(stack: Stack) -> None:
    result = stack.cli("submit", "caption", "--input", "http://169.254.169.254/latest/", check=False)
    assert result.returncode == 2 and "expected s3://bucket" in " ".join(result.stderr.split()), result.stderr
    assert "0 jobs" in _job_count(stack)


def _job_count(stack: Stack) -> str:
    return f"{stack.rows('SELECT count(*) AS n FROM jobs')[0]['n']} jobs"


# -- secrets -------------------------------------------------------------------------------------------------
def _require_password(server: ThrowawayPostgres, password: str) -> None:
    """Give user postgres a password and make TCP clients use it (scram-sha-256)."""
    with psycopg.connect(libpq_dsn(server.url), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
        (server.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        conn.execute("SELECT pg_reload_conf()")


def _redis_dump(url: str) -> bytes:
    """Every key and value Redis holds, with Celery message bodies base64-decoded."""
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key)
        values: list[Any]
        if kind == b"list":
            values = list(client.lrange(key, 0, -1))
        elif kind == b"hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = list(client.zrange(key, 0, -1))
        else:
            values = [client.dump(key) or b""]
        parts.append(key)
        for value in values:
            parts.append(value)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                parts.append(base64.b64decode(json.loads(value)["body"]))
    client.close()
    return b"\n".join(parts)


def _database_text(url: str) -> str:
    """Every text, varchar and JSON value of every table."""
    engine = create_engine(url)
    parts: list[str] = []
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' "
                "AND data_type IN ('text', 'character varying', 'json', 'jsonb')"
            )
        ).all()
        for table, column in columns:
            query = sql.SQL("SELECT {}::text FROM {}").format(sql.Identifier(column), sql.Identifier(table))
            rendered = query.as_string(None)
            parts.extend(str(value) for value in conn.execute(text(rendered)).scalars() if value is not None)
    engine.dispose()
    return "\n".join(parts)


def test_secrets_stay_out_of_database_messages_and_logs(
    throwaway_redis: tuple[str, ThrowawayRedis],
    throwaway_postgres: tuple[str, ThrowawayPostgres],
    s3_endpoint: str,
    stack_on: Callable[..., Stack],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    tag = uuid.uuid4().hex[:12]
    secrets = {
        "redis password": f"redispw-{tag}",
        "postgres password": f"pgpw-{tag}",
        "OVIS_BATCH_S3_SECRET_ACCESS_KEY": f"s3secret-{tag}",
        "AWS_SECRET_ACCESS_KEY": f"awssecret-{tag}",
    }
    redis_url, _ = throwaway_redis
    postgres_url, postgres_server = throwaway_postgres
    client = redis.Redis.from_url(redis_url)
    client.config_set("requirepass", secrets["redis password"])
    client.close()
    _require_password(postgres_server, secrets["postgres password"])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_url).ping()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(libpq_dsn(postgres_url), connect_timeout=3).close()

    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    broker_url = f"redis://:{secrets['redis password']}@127.0.0.1:{port}/0"
    database_url = postgres_url.replace("postgres@", f"postgres:{secrets['postgres password']}@", 1)
    stack = stack_on(database_url=database_url, broker_url=broker_url)
    stack.env.update(
        OVIS_BATCH_S3_ACCESS_KEY_ID="ovis-access-key",
        OVIS_BATCH_S3_SECRET_ACCESS_KEY=secrets["OVIS_BATCH_S3_SECRET_ACCESS_KEY"],
        AWS_SECRET_ACCESS_KEY=secrets["AWS_SECRET_ACCESS_KEY"],
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    for index in range(3):
        buffer = io.BytesIO()
        sample_photo(("astronaut.png", "chelsea.png", "coffee.png")[index]).save(buffer, "JPEG")
        s3.put_object(Bucket=stack.bucket, Key=f"inputs/photos/p{index}.jpg", Body=buffer.getvalue())

    # Submitted with no worker running: the messages stay in Redis to be read as they are.
    submitted = stack.cli("submit", "caption", "--input", f"s3://{stack.bucket}/inputs/photos")
    job_id = submitted.stdout.split()[-1]
    messages = _redis_dump(broker_url)
    assert job_id.encode() in messages, "the chunk messages were not captured"
    worker = spawn_worker("--gpus", "none", "--loglevel", "DEBUG", env=stack.env)  # the chattiest log
    report = _wait_succeeded(stack, job_id)
    assert report["succeeded"] == 3
    status = stack.cli("status", job_id)
    stack.cli("reconcile")
    worker.stop()

    # Wrong passwords fail without echoing what was tried.
    wrong = dict(stack.env, OVIS_BATCH_BROKER_URL=f"redis://:wrong-{tag}@127.0.0.1:{port}/0")
    refused_broker = Stack(env=wrong, bucket=stack.bucket, home=stack.home).cli(
        "submit", "generate", "--input", _prompts(stack, 1), check=False, timeout=120
    )
    wrong = dict(
        stack.env, OVIS_BATCH_DATABASE_URL=postgres_url.replace("postgres@", f"postgres:wrong-{tag}@")
    )
    refused_database = Stack(env=wrong, bucket=stack.bucket, home=stack.home).cli(
        "status", job_id, check=False
    )
    for result in (refused_broker, refused_database):
        assert result.returncode != 0
        assert f"wrong-{tag}" not in result.stdout + result.stderr

    haystacks = {
        "worker log": worker.text().encode(),
        "CLI output": (submitted.stdout + submitted.stderr + status.stdout + status.stderr).encode(),
        "failed-connection output": (refused_broker.stderr + refused_database.stderr).encode(),
        "Redis keys and messages": messages + _redis_dump(broker_url),
        "database text columns": _database_text(database_url).encode(),
    }
    leaks = [
        f"{name} in {where}"
        for name, secret in secrets.items()
        for where, haystack in haystacks.items()
        if secret.encode() in haystack or base64.b64encode(secret.encode()) in haystack
    ]
    assert leaks == []
    sizes = ", ".join(f"{where} {len(haystack)} B" for where, haystack in haystacks.items())
    print(f"SECURITY secrets: {len(secrets)} secrets found nowhere in: {sizes}")
    print("  the job ran through Redis with requirepass and PostgreSQL with scram-sha-256 passwords")


# -- Flower --------------------------------------------------------------------------------------------------
def test_flower_refuses_to_listen_beyond_localhost_without_auth(stack: Stack) -> None:
    for address in ("0.0.0.0", "::", "10.1.2.3"):
        result = stack.cli("flower", "--address", address, check=False, timeout=60)
        assert result.returncode != 0, address
        assert "OVIS_BATCH_FLOWER_BASIC_AUTH" in " ".join(result.stderr.split()), result.stderr
    # A host name cannot be checked for loopback: refused too (and nothing listens).
    assert stack.cli("flower", "--address", "flower.example.com", check=False, timeout=60).returncode != 0
    print(
        "SECURITY flower: without OVIS_BATCH_FLOWER_BASIC_AUTH refused on 0.0.0.0, ::, 10.1.2.3, a host name"
    )


def test_flower_with_auth_on_all_interfaces_answers_401(stack: Stack, tmp_path: Path) -> None:
    import socket

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = dict(stack.env, OVIS_BATCH_FLOWER_BASIC_AUTH="admin:flower-secret")
    with open(tmp_path / "flower.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "ovis-batch"), "flower", "--address", "0.0.0.0", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "flower.log").read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(answers, 60, "Flower did not start")
        assert requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).status_code == 401
        auth = ("admin", "flower-secret")
        assert requests.get(f"http://127.0.0.1:{port}/api/workers", auth=auth, timeout=10).status_code == 200
        assert "flower-secret" not in (tmp_path / "flower.log").read_text()
    finally:
        process.terminate()
        process.wait(20)


# -- TLS and passwords in URLs -------------------------------------------------------------------------------
def test_tls_and_password_urls_parse_into_the_configuration() -> None:
    settings = Settings(
        broker_url="rediss://:p%40ss@redis.example.com:6380/0?ssl_cert_reqs=required",
        database_url="postgresql://ovis:pw%25x@db.example.com:5432/ovis?sslmode=require",
    )
    connection = make_celery(settings).connection_for_write()
    assert (connection.transport_cls, connection.hostname, connection.port) == (
        "rediss",
        "redis.example.com",
        6380,
    )
    assert connection.password == "p@ss" and connection.ssl
    assert connection.as_uri() == "rediss://:**@redis.example.com:6380/0"
    assert broker_priority(settings, 9) == 0  # a TLS Redis is still Redis: priorities reversed
    engine = get_engine(settings.resolved_database_url)
    _, connect = engine.dialect.create_connect_args(engine.url)
    assert (connect["sslmode"], connect["password"], connect["host"]) == ("require", "pw%x", "db.example.com")
    assert "pw%x" not in engine.url.render_as_string(hide_password=True)
    # Alembic's configuration interpolates "%": the URL it gets must still hold the same password.
    assert alembic_config(settings.resolved_database_url).get_main_option("sqlalchemy.url") == (
        "postgresql+psycopg://ovis:pw%25x@db.example.com:5432/ovis?sslmode=require"
    )
    print("SECURITY TLS: rediss:// with ssl_cert_reqs and postgresql ?sslmode=require parse into the config")


def test_secrets_do_not_show_in_settings_repr() -> None:
    settings = Settings(
        s3_access_key_id="ak",
        s3_secret_access_key=SecretStr("s3-shh"),
        flower_basic_auth=SecretStr("u:flower-shh"),
    )
    assert "s3-shh" not in repr(settings) and "flower-shh" not in repr(settings)
    assert "s3-shh" not in repr(settings.s3_options())
