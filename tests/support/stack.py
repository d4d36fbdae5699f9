"""The production-shaped stack as real processes on loopback, for the tests that run against it.

PostgreSQL (Debian's ``postgresql`` package, a throwaway cluster), moto's S3 server, an MLflow tracking
server and a Prefect server (both on that PostgreSQL, MLflow's artifacts on the S3 endpoint) and a Prefect
process worker: what ``infra/docker-compose.yml`` runs, started without Docker. Each server is its own
process with its own log file; :class:`Stack` stops them in reverse order.

Nothing is open: the MLflow server runs its authentication app (``--app-name basic-auth``, its users and
permissions in their own database of the same PostgreSQL, an ``admin`` whose password is set at first start),
and the Prefect server's API wants its basic-auth string. Every password is random per stack and reaches
clients through the environment only (``Stack.env``: the service account's MLflow credentials and the Prefect
auth string, what a worker gets); :data:`Stack.secrets` lists them all for the credential scan.

PostgreSQL refuses to run as root: as root, the cluster's folder belongs to the ``postgres`` user the
Debian package creates and its commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psycopg2

from onevision.storage.s3 import retry_environment

BIN = Path(sys.executable).parent
DB_USER = "onevision"
MLFLOW_BUCKET = "onevision-mlflow"
DVC_BUCKET = "onevision-dvc"
REPORTS_BUCKET = "onevision-reports"
WORK_POOL = "onevision-process"
# moto accepts any key pair; these stand in for real credentials (the secret scan looks for them).
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIAONEVISIONSTACK01", "AWS_SECRET_ACCESS_KEY": "stack-secret-" + "x" * 24,
           "AWS_DEFAULT_REGION": "us-east-1"}


# The MLflow server's authentication config (MLFLOW_AUTH_CONFIG_PATH): everyone authenticated reads, writes need a
# grant (`onevision access setup`); verified credentials are cached for a minute (PBKDF2 per request otherwise).
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = {database_uri}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


class StackError(RuntimeError):
    """A server of the stack did not come up; the message names it and ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise StackError("PostgreSQL is not installed: `apt-get install -y postgresql` (make install does it)")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http(url: str, name: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} before it answered {url}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise StackError(f"{name} did not answer {url} within {timeout:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def server_process(name: str, cmd: list[str], log: Path, env: dict[str, str], health: str | None = None,
                   cwd: Path | None = None, timeout: float = 120.0):
    """Start ``cmd`` in its own process group with output to ``log``; wait until ``health`` answers; stop it after."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        if health:
            wait_http(health, name, proc, log, timeout)
        yield proc
    finally:
        _stop(proc)


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with password authentication for :data:`DB_USER`."""

    port: int
    password: str
    data_dir: Path

    def url(self, database: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str) -> list[tuple]:
        with psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=self.password,
                              dbname=database) as con, con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


@contextmanager
def postgres(databases: tuple[str, ...] = ("mlflow", "mlflow_auth", "prefect")):
    """initdb a cluster in a fresh folder, start it on a free loopback port, create ``databases``; remove it after."""
    pg = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="onevision-pg-"))
    as_root = os.geteuid() == 0
    run_as: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    password = secrets.token_urlsafe(18)
    (root / "pwfile").write_text(password + "\n")
    data = root / "data"
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}

    def run(*args: str) -> None:
        proc = subprocess.run([*run_as, *args], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise StackError(f"PostgreSQL: `{' '.join(args)}` failed:\n{proc.stdout}{proc.stderr}")

    run(str(pg / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(root / "pwfile"),
        "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8")
    (root / "pwfile").unlink()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    run(str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-o", options, "-w", "-t", "60", "start")
    try:
        con = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, password=password, dbname="postgres")
        con.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with con.cursor() as cur:
            for db in databases:
                cur.execute(f'CREATE DATABASE "{db}"')
        con.close()
        yield Postgres(port, password, data)
    finally:
        subprocess.run([*run_as, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Stack:
    """Where each server of a running stack listens, and the environment that points a client at them."""

    postgres: Postgres
    s3_endpoint: str
    mlflow_uri: str
    prefect_api: str
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    admin: tuple[str, str] = ("admin", "")  # the MLflow server's admin account (creates the team's accounts)
    prefect_auth: str = ""  # PREFECT_API_AUTH_STRING the Prefect server wants
    passwords: dict[str, str] = field(default_factory=dict)  # the team's MLflow accounts, created by `onevision access setup`

    def as_user(self, user: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """A client environment on this stack that authenticates to MLflow as ``user`` (the admin or a team account)."""
        password = self.admin[1] if user == self.admin[0] else self.passwords[user]
        return {**client_env(self.env, base), "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}

    @property
    def secrets(self) -> list[str]:
        """Every credential of the stack: none may appear in a log, a row or a report."""
        return [AWS_ENV["AWS_SECRET_ACCESS_KEY"], self.postgres.password, self.admin[1], self.prefect_auth.split(":", 1)[-1],
                *self.passwords.values()]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = s3_client(self.s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"],
                        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])


def client_env(stack_env: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(stack_env)
    return env


@contextmanager
def running_stack(state: Path, team: tuple[str, ...] = ()):
    """PostgreSQL, S3 (moto), MLflow server (with authentication) and Prefect server (with basic auth) on loopback;
    yields a :class:`Stack` whose ``passwords`` holds a fresh password for each account of ``team`` (the accounts
    themselves are created by the caller, as a team does: `onevision access setup`)."""
    logs = state / "logs"
    with ExitStack() as stack:
        pg = stack.enter_context(postgres())
        base = {**os.environ, **AWS_ENV, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
        base.pop("MLFLOW_TRACKING_URI", None)
        base.pop("PREFECT_API_URL", None)

        s3_port = free_port()
        stack.enter_context(server_process(
            "S3 (moto)", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], logs / "s3.log", base,
            health=f"http://127.0.0.1:{s3_port}/moto-api/"))
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        s3 = s3_client(s3_endpoint)
        for bucket in (MLFLOW_BUCKET, DVC_BUCKET, REPORTS_BUCKET):
            s3.create_bucket(Bucket=bucket)

        mlflow_port = free_port()
        admin = ("admin", secrets.token_urlsafe(18))
        auth_ini = state / "mlflow-auth.ini"  # what infra/mlflow-auth.ini holds, with this stack's database
        auth_ini.write_text(AUTH_INI.format(database_uri=pg.url("mlflow_auth")))
        # the server proxies artifacts to S3 with its own boto3 client: the same retry policy as ours
        mlflow_env = {**base, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **retry_environment(5),
                      "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
                      "MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1]}
        stack.enter_context(server_process(
            "MLflow server",
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--workers", "1", "--backend-store-uri", pg.url("mlflow"), "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"],
            logs / "mlflow.log", mlflow_env, health=f"http://127.0.0.1:{mlflow_port}/health", cwd=state))

        prefect_port = free_port()
        prefect_auth = f"onevision:{secrets.token_urlsafe(18)}"
        prefect_env = {**base, "PREFECT_SERVER_API_AUTH_STRING": prefect_auth, "PREFECT_HOME": str(state / "prefect-server"),
                       "PREFECT_API_DATABASE_CONNECTION_URL": pg.url("prefect", driver="asyncpg"),
                       "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(prefect_port),
                       "PREFECT_UI_ENABLED": "false"}
        stack.enter_context(server_process(
            "Prefect server", [str(BIN / "prefect"), "server", "start", "--no-ui"], logs / "prefect-server.log",
            prefect_env, health=f"http://127.0.0.1:{prefect_port}/api/health", timeout=180))

        passwords = {user: secrets.token_urlsafe(18) for user in team}
        env = {**AWS_ENV, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
               "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PREFECT_API_AUTH_STRING": prefect_auth,
               "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
        yield Stack(pg, s3_endpoint, env["MLFLOW_TRACKING_URI"], env["PREFECT_API_URL"], logs, env, admin, prefect_auth, passwords)


def create_work_pool(stack: Stack, env: dict[str, str], pool: str = WORK_POOL) -> None:
    """`prefect work-pool create POOL --type process` on the stack's server (what prefect.yaml's comment says to run once)."""
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                   env=client_env(stack.env, env), check=True, capture_output=True, text=True)


@contextmanager
def worker(stack: Stack, cwd: Path, env: dict[str, str], pool: str = WORK_POOL):
    """A Prefect process worker polling ``pool`` on the stack's server."""
    proc_env = client_env(stack.env, env)
    with server_process("Prefect worker", [str(BIN / "prefect"), "worker", "start", "--pool", pool,
                                           "--type", "process", "--prefetch-seconds", "5"],
                        stack.logs / "worker.log", proc_env, cwd=cwd) as proc:
        yield proc
