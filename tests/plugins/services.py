"""Pytest fixtures for Redis and PostgreSQL: the session's own, and throwaway ones a test may stop.

Every test session keeps to itself, so that two runs on one machine (two clones, two engineers) never meet:
"the" Redis is a throwaway redis-server of the session's own, on a free port with its own folder, and "the"
PostgreSQL is a database of the session's own, created on the shared server that ``make services`` starts
and dropped at the end (a test that wants an empty one gets another database of its own). Point the tests
elsewhere with ``OVIS_TEST_REDIS_URL`` (used as it is: tests keep to queue names of their own) and
``OVIS_TEST_POSTGRES_URL`` (the server on which the session creates its databases). When a service is
missing, its tests fail under CI (``CI=true``) and are skipped elsewhere. Throwaway servers run from the same
binaries, on a free port with a temporary directory of their own, so that fault tests can stop, kill and
restart them without disturbing anyone else.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.engine import make_url

REDIS_URL_ENV = "OVIS_TEST_REDIS_URL"
POSTGRES_URL_ENV = "OVIS_TEST_POSTGRES_URL"
#: The server on which each session creates its databases (connecting to `test` only to create and drop them).
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: Databases the tests create are named ovis_test_<session>[_<test>], so that leftovers are easy to tell.
DATABASE_PREFIX = "ovis_test_"

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
#: How many ports a throwaway server tries before giving up, when another process took the port it was given.
_PORT_TRIES = 5
#: The lowest port free_port hands out, clear of the well-known and registered services of most machines.
_LOWEST_PORT = 15000
_CONNECT_TIMEOUT_S = 3
# redis-py retries a refused connection with backoff for seconds by default; a probe wants the answer now.
_NO_RETRY = Retry(NoBackoff(), retries=0)


def service_unavailable(service: str, reason: str, *, url_env: str | None = None) -> NoReturn:
    """Fail the test under CI, where a missing service is a broken environment; skip it elsewhere."""
    message = f"{service} unavailable: {reason}\nStart the local servers with `make services`"
    message += f", or set {url_env} to use another server." if url_env else "."
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, picked at random below the ephemeral range.

    The kernel hands out the ports of the ephemeral range to every outgoing connection: a port found free
    there (bind to port 0) may carry some client's connection by the time a server binds it. Below that range
    only servers take ports, and two test runs picking at random rarely pick the same one; a throwaway server
    that loses that race anyway starts again on another port.
    """
    low = _ephemeral_range()[0]
    for _ in range(200):
        port = _LOWEST_PORT + secrets.randbelow(max(low - _LOWEST_PORT, 1))
        if port < low and _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a machine with no room below the range
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux), or its usual default."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    """Whether some process accepts connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redacted(url: str) -> str:
    """The URL with its password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def libpq_dsn(sqlalchemy_url: str) -> str:
    """A libpq URI (what psycopg takes) for a ``postgresql+psycopg://`` SQLAlchemy URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


# -- the session's servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def session_tag() -> str:
    """A name part that no other test session uses: its databases carry it."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's Redis: a throwaway redis-server of its own, or ``OVIS_TEST_REDIS_URL``.

    A server of its own rather than a database number of a shared one: nothing another run publishes,
    flushes or leaves behind reaches this one's workers.
    """
    given = os.environ.get(REDIS_URL_ENV)
    if given:
        _check_redis(given)
        yield given
        return
    executable = shutil.which("redis-server")
    if executable is None:
        service_unavailable("Redis", "redis-server is not installed", url_env=REDIS_URL_ENV)
    server = ThrowawayRedis(executable, tmp_path_factory.mktemp("redis"))
    server.service = "the session's Redis"
    try:
        _start_or_give_up(server, server.start)
        yield server.url
    finally:
        server.close()


def _check_redis(url: str) -> None:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_CONNECT_TIMEOUT_S, retry=_NO_RETRY
    )
    error: redis.RedisError | None = None
    try:
        client.ping()
    except redis.RedisError as exc:
        error = exc
    finally:
        client.close()
    if error is not None:
        service_unavailable("Redis", f"{redacted(url)} does not answer ({error})", url_env=REDIS_URL_ENV)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """SQLAlchemy URL of the PostgreSQL server the tests create their databases on (its `test` database)."""
    url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
    error: psycopg.Error | None = None
    try:
        with psycopg.connect(libpq_dsn(url), connect_timeout=_CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        error = exc
    if error is not None:
        reason = f"{redacted(url)} does not answer ({str(error).strip()})"
        service_unavailable("PostgreSQL", reason, url_env=POSTGRES_URL_ENV)
    return url


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str, session_tag: str) -> Iterator[str]:
    """SQLAlchemy URL of the session's own database, empty at the start, dropped at the end."""
    with _database(postgres_server_url, f"{DATABASE_PREFIX}{session_tag}") as url:
        yield url


@pytest.fixture
def pg_database(postgres_server_url: str, session_tag: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database of this test's own, dropped afterwards."""
    with _database(postgres_server_url, f"{DATABASE_PREFIX}{session_tag}_{uuid.uuid4().hex[:12]}") as url:
        yield url


@contextlib.contextmanager
def _database(server_url: str, name: str) -> Iterator[str]:
    """Create database `name` on the server, yield its SQLAlchemy URL, and drop it."""
    admin_dsn = libpq_dsn(server_url)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE ends the connections a test's engines (or a worker it killed) still hold (PostgreSQL 13+).
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- throwaway servers -------------------------------------------------------------------------------------
class ServerStartError(RuntimeError):
    """A throwaway server did not answer in time; the message ends with its log."""


class ThrowawayServer:
    """A server process on its own port and directory; ``stop``, ``kill`` and ``start`` it to test faults.

    ``stop`` shuts the server down cleanly, ``kill`` ends it as a crash would, ``start`` brings it back on
    the same port with the same data directory. Each waits at most a bounded time.
    """

    #: Name used in messages.
    service = "server"
    #: Signals that end the server cleanly and as a crash would.
    stop_signal = signal.SIGTERM
    kill_signal = signal.SIGKILL

    def __init__(self, workdir: Path, *, run_as: pwd.struct_passwd | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self._run_as = run_as
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        """Where clients connect."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def answers(self) -> bool:
        """True when this server, not some other process on its port, accepts a client and runs a command."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server (if it is not running) and wait until it answers.

        The first start moves to another port when the one it was given was taken before the server bound it
        (another test run picked it too); a restart keeps its port, as clients expect.
        """
        if self.running:
            return
        tries = 1 if self._started else _PORT_TRIES
        for attempt in range(1, tries + 1):
            try:
                self._launch()
            except ServerStartError:
                if attempt == tries or not _listening(self.port):
                    raise
                self.port = free_port()
            else:
                self._started = True
                return

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Its own session: a Ctrl-C on pytest reaches the teardown, not the server directly.
                start_new_session=True,
                **self._user_kwargs(),
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self.answers():
            if not self.running or time.monotonic() > deadline:
                self._end(signal.SIGKILL)
                raise ServerStartError(
                    f"{self.service} on port {self.port} did not answer within {_START_TIMEOUT_S:.0f}s; "
                    f"its log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down cleanly and wait until it has exited."""
        self._end(self.stop_signal)

    def kill(self) -> None:
        """End the server abruptly, as a crash would, and wait until it has exited."""
        self._end(self.kill_signal)

    def close(self) -> None:
        """Stop the server whatever state it is in (teardown)."""
        self._end(self.kill_signal)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def _end(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_STOP_TIMEOUT_S)
        # Whatever is left of its process group (PostgreSQL backends, say) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_STOP_TIMEOUT_S)
        self._process = None

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}


class ThrowawayRedis(ThrowawayServer):
    """A redis-server with no persistence unless configured (``config`` adds ``--name value`` options)."""

    service = "throwaway Redis"

    def __init__(self, executable: str, workdir: Path, *, config: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.executable = executable
        self.config = {"save": "", "appendonly": "no", **(config or {})}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        options = [arg for name, value in self.config.items() for arg in (f"--{name}", value)]
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            *options,
        ]  # fmt: skip

    def answers(self) -> bool:
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1, retry=_NO_RETRY
        )
        try:
            return self._process is not None and client.info("server")["process_id"] == self._process.pid
        except redis.RedisError:
            return False
        finally:
            client.close()


class ThrowawayPostgres(ThrowawayServer):
    """A PostgreSQL cluster of its own (trust auth for user postgres); ``kill`` is an immediate shutdown.

    An immediate shutdown (SIGQUIT) is PostgreSQL's crash: no checkpoint, WAL recovery at the next start.
    A SIGKILL of the postmaster would leave its backends holding shared memory and block the restart.
    """

    service = "throwaway PostgreSQL"
    stop_signal = signal.SIGINT  # fast shutdown: roll back open transactions, checkpoint, exit
    kill_signal = signal.SIGQUIT

    def __init__(self, bindir: Path, workdir: Path, *, run_as: pwd.struct_passwd | None = None) -> None:
        super().__init__(workdir, run_as=run_as)
        self.bindir = bindir
        self.datadir = workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        """Create the cluster (initdb)."""
        initdb = [
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", "postgres",
            "-A", "trust",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        result = subprocess.run(
            initdb,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
            **self._user_kwargs(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
            raise ServerStartError(f"initdb failed with exit code {result.returncode}:\n{output}")

    def command(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-k", str(self.workdir),  # its socket beside its data, not in the shared /var/run/postgresql
            "-c", "listen_addresses=127.0.0.1",
            # Durability against power loss is not under test; a process crash loses nothing even so.
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip

    def answers(self) -> bool:
        try:
            with psycopg.connect(libpq_dsn(self.url), connect_timeout=1) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        return row is not None and Path(row[0]) == self.datadir


def _postgres_bindir() -> Path | None:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if installed:
        return installed[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as when we are root (initdb and postgres refuse to run as root)."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _start_or_give_up(server: ThrowawayServer, *steps: Callable[[], None]) -> None:
    error: Exception | None = None
    try:
        for step in steps:
            step()
    except (ServerStartError, OSError, subprocess.SubprocessError) as exc:
        error = exc
    if error is not None:
        service_unavailable(server.service, str(error))


@pytest.fixture
def throwaway_redis(request: pytest.FixtureRequest) -> Iterator[tuple[str, ThrowawayRedis]]:
    """(url, server) of a Redis of this test's own; the server handle stops, kills and restarts it.

    No persistence by default; parametrize indirectly with a dict of options to change that, e.g.
    ``@pytest.mark.parametrize("throwaway_redis", [{"appendonly": "yes"}], indirect=True)``.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        service_unavailable("throwaway Redis", "redis-server is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="ovis-redis-"))
    server = ThrowawayRedis(executable, workdir, config=getattr(request, "param", None))
    try:
        _start_or_give_up(server, server.start)
        yield server.url, server
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def throwaway_postgres() -> Iterator[tuple[str, ThrowawayPostgres]]:
    """(SQLAlchemy url, server) of a PostgreSQL cluster of this test's own: database postgres, trust auth."""
    bindir = _postgres_bindir()
    if bindir is None:
        service_unavailable("throwaway PostgreSQL", "no initdb under /usr/lib/postgresql/*/bin or on PATH")
    run_as = None
    if os.geteuid() == 0:
        run_as = _unprivileged_user()
        if run_as is None:
            service_unavailable(
                "throwaway PostgreSQL", "running as root and there is no 'postgres' user to run the server as"
            )
    # Not under pytest's tmp_path: that is private to us, and the server may run as another user.
    workdir = Path(tempfile.mkdtemp(prefix="ovis-pg-"))
    if run_as is not None:
        os.chown(workdir, run_as.pw_uid, run_as.pw_gid)
    server = ThrowawayPostgres(bindir, workdir, run_as=run_as)
    try:
        _start_or_give_up(server, server.init, server.start)
        yield server.url, server
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
