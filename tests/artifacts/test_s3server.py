"""The embedded SeaweedFS: loopback only, generated credentials, clean stop, no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from ggufops.artifacts import s3config
from ggufops.artifacts.dvc import S3Remote
from ggufops.artifacts.s3config import S3Settings
from ggufops.artifacts.s3server import S3Server, ServerInfo, read_running
from ggufops.cli import main
from ggufops.errors import S3AuthError, S3ServerError
from testing.runtime import wait_for
from testing.s3 import s3_client


def _settings(info: ServerInfo, **overrides: str) -> S3Settings:
    values = {"remote": "models", "url": "s3://models", "bucket": info.bucket, "prefix": "",
              "endpoint_url": info.endpoint, "access_key_id": info.access_key_id,
              "secret_access_key": info.secret_access_key, **overrides}
    return S3Settings(**values)


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def test_session_server_listens_on_loopback_only(s3_server: ServerInfo) -> None:
    # weed opens some listeners after S3 answers: wait for them rather than race them
    wait_for(lambda: len(_listening(s3_server.pid)) >= 5)  # master, volume, filer, s3, grpc
    addresses = _listening(s3_server.pid)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    assert ("127.0.0.1", port) in addresses
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}


def test_credentials_are_generated_and_private(s3_server: ServerInfo) -> None:
    state = Path(s3_server.state_dir)
    creds = state / "s3.json"
    assert creds.stat().st_mode & 0o777 == 0o600
    identity = json.loads(creds.read_text())["identities"][0]["credentials"][0]
    assert identity == {"accessKey": s3_server.access_key_id,
                        "secretKey": s3_server.secret_access_key}
    assert len(s3_server.secret_access_key) >= 30
    assert read_running(state) == s3_server
    server_json = state / "server.json"  # holds the secret too, for `s3 env`
    assert server_json.stat().st_mode & 0o777 == 0o600
    assert s3_server.secret_access_key not in repr(s3_server)


def test_bucket_answers_and_signatures_are_enforced(s3_server: ServerInfo) -> None:
    S3Remote(_settings(s3_server)).check_bucket()
    with pytest.raises(S3AuthError, match="rejected the credentials"):
        S3Remote(_settings(s3_server, secret_access_key="wrong")).check_bucket()


def test_start_stop_restart_keeps_data(tmp_path: Path) -> None:
    state = tmp_path / "s3"
    with S3Server(state) as server:
        info = server.info()
        s3_client(info).put_object(Bucket="models", Key="k", Body=b"kept")  # type: ignore[attr-defined]
        with pytest.raises(S3ServerError, match="already runs"):
            S3Server(state).start()
        assert (state / "server.json").is_file()
    assert not psutil.pid_exists(info.pid)
    assert not (state / "server.json").exists()
    with pytest.raises(S3ServerError, match="s3 serve"):
        read_running(state)
    with S3Server(state) as again:
        second = again.info()
        assert second.access_key_id == info.access_key_id  # credentials are reused
        body = s3_client(second).get_object(Bucket="models", Key="k")["Body"].read()  # type: ignore[attr-defined]
        assert body == b"kept"


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = S3Server(tmp_path / "s3", port=port)
        with pytest.raises(S3ServerError) as e:
            server.start()
    message = str(e.value)
    assert f"127.0.0.1:{port}" in message
    assert "weed.log" in message
    assert "not available" in message  # weed's own reason, from its log
    assert "--port" in message
    assert server.proc is None
    assert not (tmp_path / "s3" / "server.json").exists()


def test_a_stale_server_json_is_rewritten_private(tmp_path: Path) -> None:
    state = tmp_path / "s3"
    state.mkdir()
    (state / "server.json").write_text("{}")
    (state / "server.json").chmod(0o644)  # left by a killed server of an older version
    with S3Server(state):
        assert (state / "server.json").stat().st_mode & 0o777 == 0o600
        assert (state / "s3.json").stat().st_mode & 0o777 == 0o600


def _serve(repo: Path, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "ggufops"), "-C", str(repo), "s3", "serve",
         "--port", "0", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _running_pid(state: Path) -> int:
    wait_for((state / "server.json").is_file)
    return read_running(state).pid


@pytest.mark.slow
def test_serve_cli_ctrl_c_stops_weed(registry_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _serve(registry_repo, state)
    try:
        weed = _running_pid(state)
        info = read_running(state)
        # serve writes .dvc/config.local just after the server answers: wait for it
        wait_for(lambda: s3config.resolve(registry_repo, environ={}).endpoint_url
                  == info.endpoint)
        settings = s3config.resolve(registry_repo, environ={})
        assert settings.endpoint_url == info.endpoint
        assert settings.access_key_id == info.access_key_id
        assert settings.secret_access_key == info.secret_access_key
        local = registry_repo / ".dvc" / "config.local"
        assert local.stat().st_mode & 0o777 == 0o600
        env = CliRunner().invoke(main, ["-C", str(registry_repo), "s3", "env", "--state-dir",
                                        str(state)])
        assert env.exit_code == 0
        assert f"export AWS_ACCESS_KEY_ID={info.access_key_id}" in env.output
        assert f"export AWS_SECRET_ACCESS_KEY={info.secret_access_key}" in env.output
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert info.endpoint.encode() in out
    # serve's output lands in journals: the secret is printed only by `s3 env`
    assert info.secret_access_key.encode() not in out + err
    assert b"ggufops s3 env --state-dir" in out
    wait_for(lambda: not psutil.pid_exists(weed), timeout=10)


@pytest.mark.slow
def test_weed_dies_with_a_killed_owner(registry_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _serve(registry_repo, state)
    try:
        weed = _running_pid(state)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup code can run in the owner
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not psutil.pid_exists(weed) or
              psutil.Process(weed).status() == psutil.STATUS_ZOMBIE, timeout=15)
