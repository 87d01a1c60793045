"""Fixtures for tests that talk to real services. A service that cannot be reached skips the tests with the
reason, except under CI=true where they fail: CI never passes by skipping.

PostgreSQL: a database of its own per test, created through the ``postgres`` database of the server at
FARM_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres, trust auth).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from farm.store.db import Database, redact_url

ADMIN_URL = os.environ.get("FARM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An autocommit engine on the server's ``postgres`` database (CREATE/DROP DATABASE)."""
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except OperationalError as e:
        engine.dispose()
        if os.environ.get("CI") == "true":
            raise
        reason = " ".join(str(e.orig).split())
        pytest.skip(f"PostgreSQL unreachable at {redact_url(ADMIN_URL)}: {reason}")
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_pg_url(pg_admin: Engine) -> Iterator[str]:
    """URL of a new, empty database (farm_test_<random>), dropped at teardown."""
    name = f"farm_test_{secrets.token_hex(6)}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_db(fresh_pg_url: str) -> Iterator[Database]:
    """A Database on a new, empty PostgreSQL database."""
    db = Database(fresh_pg_url)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def store_support() -> ModuleType:
    """tests/unit/store/store_support.py, the SQLite tests' checks and data set (by path: no package there)."""
    path = Path(__file__).resolve().parent.parent / "unit" / "store" / "store_support.py"
    spec = importlib.util.spec_from_file_location("store_support_for_pg", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- S3: a real S3 HTTP endpoint (moto's server mode) -----------------------------------------------------
# moto runs in-process as a threaded HTTP server on a free port, and boto3 reaches it through AWS_ENDPOINT_URL
# exactly as it reaches MinIO in production (moto's mock_aws, which patches boto3 itself, is not used).
# It cannot start: skip with the reason locally, fail under CI=true.

S3_TEST_ACCESS_KEY_ID = "AKIAFARMTEST00000000"
S3_TEST_SECRET_ACCESS_KEY = "farm-test-secret-must-never-be-printed-0123"


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """URL (http://127.0.0.1:<port>) of moto's S3 server, started once for the session."""
    import threading
    import urllib.request

    try:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        # start() waits forever if the server thread dies before it is ready: give it a deadline.
        starter = threading.Thread(target=server.start, daemon=True)
        starter.start()
        starter.join(timeout=30)
        if starter.is_alive():
            raise TimeoutError("not ready after 30 s")
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        ping = urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST")
        urllib.request.urlopen(ping, timeout=10).close()
    except Exception as e:
        reason = f"moto's S3 server could not start: {type(e).__name__}: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield url
    server.stop()


@pytest.fixture
def s3_env(moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """boto3's standard settings aimed at moto (endpoint, dummy credentials, region); none from the host."""
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookups: fast NoCredentials
    return moto_s3_endpoint


@pytest.fixture
def s3_client(s3_env: str):  # a boto3 S3 client
    """A plain boto3 client on moto, for acting behind the store's back."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def s3_bucket(s3_client) -> str:
    """A new, empty bucket (farm-test-<random>) on moto."""
    name = f"farm-test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=name)
    return name


# --- faults: a TCP proxy in front of PostgreSQL, a Redis of the test's own ----------------------------------


@pytest.fixture
def pg_proxy(fresh_pg_url: str) -> Iterator[tuple[Any, str]]:
    """(proxy, url): a :class:`tests.integration.faults.TcpProxy` in front of the server of a fresh database, and
    that database's URL through the proxy. ``proxy.drop()`` / ``proxy.restore()`` make a database outage."""
    from tests.integration.faults import TcpProxy, host_port

    host, port = host_port(fresh_pg_url, 5432)
    proxy = TcpProxy(host, port).start()
    try:
        yield proxy, proxy.url(fresh_pg_url)
    finally:
        proxy.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A :class:`tests.integration.faults.OwnRedis` (no persistence) on a free port, started; killed at teardown.

    ``own_redis.restart()`` is a broker crash: it comes back on the same port with every message lost.
    """
    from tests.integration.faults import OwnRedis

    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = OwnRedis(workdir=workdir)
    try:
        server.start()
    except RuntimeError as e:
        server.kill()
        reason = f"could not start a redis-server of the test's own: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield server
    server.stop()
