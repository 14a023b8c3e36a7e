"""TLS and passwords in the settings' URLs reach the broker, the database and Alembic intact, and secrets stay
out of the settings' repr (the security tests with services: tests/integration/test_security.py)."""

from __future__ import annotations

from pydantic import SecretStr

from jobs.broker import broker_priority, make_celery
from jobs.db import alembic_config, get_engine
from jobs.settings import Settings


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
