"""W&B is checked before anything heavy: a bad key or an unreachable server is an error (exit 2) or, by default, an
offline run that says so; never a traceback after the model has loaded, never a two-minute hang. No test needs a
network: the servers are local ones, or a closed port."""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from lora_ft import cli, console, tracking
from lora_ft.config import load_config
from lora_ft.errors import UserError

from .conftest import write_config

GOOD_FORMAT_KEY = "0123456789abcdef0123456789abcdef01234567"


def _preflight(cfg, said: list | None):
    """preflight, with what it says collected in ``said`` (None: it must say nothing)."""
    with console.capture() as lines:
        mode = tracking.preflight(cfg)
    if said is None:
        assert not lines, lines
    else:
        said.extend(lines)
    return mode


@pytest.fixture
def wandb_config(tiny_llama, legal_data, tmp_path, monkeypatch):
    """A config that logs to W&B, in an environment with no W&B key, settings or server of the developer's."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # `wandb login --host` writes here
    monkeypatch.chdir(tmp_path)  # `wandb offline` writes ./wandb/settings

    def make(fallback: str = "offline"):
        config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data,
                              extra=f"tracking:\n  report_to: [wandb]\n  wandb_fallback: {fallback}\n")
        return load_config(config).config

    return make


def _server(status: int, body: dict, seen: list | None = None):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if seen is not None:
                seen.append(self.headers.get("Authorization"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _quiet(_line: str) -> None:
    pass


def test_a_malformed_key_is_an_error_or_an_offline_run(wandb_config, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    monkeypatch.setattr(tracking, "_server_problem", pytest.fail)  # decided locally, no network
    with pytest.raises(UserError) as exc:
        tracking.preflight(wandb_config("error"))
    text = exc.value.render()
    assert "malformed" in exc.value.title and "WANDB_API_KEY" in exc.value.title and "not-a-key" not in text
    assert "wandb login" in text and "WANDB_MODE=offline" in text and "tracking.report_to" in text
    said = []
    assert _preflight(wandb_config(), said) == "offline"
    assert len(said) == 1 and "logs offline" in said[0] and "not-a-key" not in said[0]

    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY + "\n")  # pasted with its newline
    with pytest.raises(UserError, match="whitespace"):
        tracking.preflight(wandb_config("error"))
    monkeypatch.delenv("WANDB_API_KEY")  # the key `wandb login` wrote: its file is named, the key is not
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password short-key\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(UserError) as exc:
        tracking.preflight(wandb_config("error"))
    assert str(tmp_path / "netrc") in exc.value.title and "short-key" not in exc.value.render()


def test_an_unreachable_server_is_asked_once_not_retried(wandb_config, monkeypatch):
    """W&B's own client retries an unreachable server for minutes (107 s measured); the preflight asks once."""
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    with socket.socket() as server:  # takes each connection and drops it at once: a server that is not there
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.5)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        attempts = []

        def drop_connections():
            while not done.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    continue
                attempts.append(1)
                connection.close()

        done = threading.Event()
        dropper = threading.Thread(target=drop_connections)
        dropper.start()
        try:
            with pytest.raises(UserError, match="cannot reach the W&B server") as exc:
                tracking.preflight(wandb_config("error"))
        finally:
            done.set()
            dropper.join()
    assert len(attempts) == 1, f"{len(attempts)} connections: the preflight must not retry"
    assert "WANDB_BASE_URL" in exc.value.fix and GOOD_FORMAT_KEY not in exc.value.render()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    said = []
    assert _preflight(wandb_config(), said) == "offline"
    assert "cannot reach the W&B server" in said[0] and GOOD_FORMAT_KEY not in said[0]


def test_a_key_the_server_rejects_or_accepts(wandb_config, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    rejecting = _server(401, {"errors": ["unauthorized"]})
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{rejecting.server_port}")
    with pytest.raises(UserError, match=r"rejected the API key \(HTTP 401\)") as exc:
        tracking.preflight(wandb_config("error"))
    assert "wandb login" in exc.value.fix
    assert tracking.preflight(wandb_config()) == "offline"
    rejecting.shutdown()
    not_wandb = _server(404, {})
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{not_wandb.server_port}")
    with pytest.raises(UserError, match="not a W&B server"):
        tracking.preflight(wandb_config("error"))
    not_wandb.shutdown()
    seen = []
    accepting = _server(200, {"data": {"viewer": {"id": "VXNlcjox"}}}, seen)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{accepting.server_port}/")
    said = []
    assert _preflight(wandb_config("error"), said) == "online" and not said
    accepting.shutdown()
    assert seen == ["Basic " + base64.b64encode(f"api:{GOOD_FORMAT_KEY}".encode()).decode()]


def test_a_self_hosted_server_from_wandb_login_host(wandb_config, monkeypatch, tmp_path):
    """`wandb login --host URL` writes the server to the settings file and the key under host:port in netrc."""
    seen = []
    accepting = _server(200, {"data": {"viewer": {"id": "VXNlcjox"}}}, seen)
    host = f"127.0.0.1:{accepting.server_port}"
    (tmp_path / "wandb-config").mkdir()
    (tmp_path / "wandb-config" / "settings").write_text(f"[default]\nbase_url = http://{host}\n")
    (tmp_path / "netrc").write_text(f"machine {host}\n  login user\n  password {GOOD_FORMAT_KEY}\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert tracking.preflight(wandb_config("error")) == "online"
    accepting.shutdown()
    assert len(seen) == 1 and seen[0].startswith("Basic ")


def test_offline_disabled_or_no_wandb_need_no_check(wandb_config, monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_server_problem", pytest.fail)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    for mode in ("offline", "disabled"):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert _preflight(wandb_config("error"), None) == mode
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "wandb").mkdir()  # what `wandb offline` writes in the working directory
    (tmp_path / "wandb" / "settings").write_text("[default]\nmode = offline\n")
    assert _preflight(wandb_config("error"), None) == "offline"
    cfg = wandb_config("error")
    cfg.tracking.report_to = ["tensorboard"]
    assert _preflight(cfg, None) is None


def test_no_key_logs_offline_or_stops(wandb_config, monkeypatch):
    monkeypatch.setattr(tracking, "_server_problem", pytest.fail)
    said = []
    assert _preflight(wandb_config(), said) == "offline"
    assert "no API key found" in said[0] and "logs offline" in said[0]
    with pytest.raises(UserError, match="no API key found") as exc:
        tracking.preflight(wandb_config("error"))
    assert "wandb login" in exc.value.fix


def test_an_invalid_wandb_setting_or_identity_token_is_a_user_error(wandb_config, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(UserError, match="a W&B setting is invalid: mode"):
        tracking.preflight(wandb_config())
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "missing-token"))
    with pytest.raises(UserError, match="cannot be read"):  # offline would fail too: wandb-core cannot start
        tracking.preflight(wandb_config())
    (tmp_path / "token").write_text("a-jwt")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    answering = _server(401, {})  # the token is wandb's to exchange: that the server answers is enough
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{answering.server_port}")
    assert tracking.preflight(wandb_config("error")) == "online"
    answering.shutdown()
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    with pytest.raises(UserError, match="both WANDB_API_KEY and WANDB_IDENTITY_TOKEN_FILE"):
        tracking.preflight(wandb_config("error"))


def test_train_with_a_bad_key_stops_before_the_model_and_leaves_nothing(tiny_llama, legal_data, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "bad")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data,
                          extra="tracking:\n  report_to: [wandb]\n  wandb_fallback: error\n")
    assert cli.main(["train", str(config)]) == 2
    captured = capsys.readouterr()
    assert "W&B is not usable" in captured.err and "Traceback" not in captured.err
    assert "loading" not in captured.out, "refused before the model loads"
    assert not (tmp_path / "run").exists(), "a refused run leaves no files"


def test_a_resolver_or_server_that_never_answers_is_given_up_on_while_it_still_hangs(wandb_config, monkeypatch):
    """The socket timeout bounds neither the name lookup nor a server that accepts and never answers."""
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    monkeypatch.setattr(tracking, "CHECK_SECONDS", 1.0)
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def hanging_resolver(host, *args, **kwargs):
        if host == "wandb.invalid":
            release.wait(120)  # a resolver with no network to reach
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_resolver)
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.invalid")
    try:
        with pytest.raises(UserError, match="no answer from the W&B server"):
            tracking.preflight(wandb_config("error"))
        assert not release.is_set(), "decided while the lookup still hangs (after CHECK_SECONDS), not after it"
    finally:
        release.set()
    with socket.socket() as silent:  # connections queue in the backlog; nothing ever answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        said = []
        assert _preflight(wandb_config(), said) == "offline"  # returns although the server never answers
        assert "(timed out)" in said[0] and "logs offline" in said[0]


def test_the_offline_fallback_really_starts_offline(wandb_config, monkeypatch, tmp_path):
    """The mode preflight chose reaches wandb.init: a malformed key in the environment does not stop it."""
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    cfg = wandb_config()
    mode = tracking.preflight(cfg)
    trackers = tracking.start_trackers(cfg, tmp_path / "run", {"x": 1}, wandb_mode=mode)
    try:
        assert trackers.wandb_run is not None and mode == "offline"
        assert any("W&B offline run files:" in note for note in trackers.notes)
    finally:
        trackers.finish()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_a_failing_wandb_init_is_a_user_error_not_a_traceback(tmp_path, wandb_config, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError(f"wandb.init failed in mode {kwargs.get('mode')}")

    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    with pytest.raises(UserError, match="W&B could not start: wandb.init failed in mode online"):
        tracking.start_trackers(wandb_config("error"), tmp_path / "a", {}, wandb_mode="online")
    with pytest.raises(UserError, match="not even offline"):  # the offline retry fails too
        tracking.start_trackers(wandb_config(), tmp_path / "b", {}, wandb_mode="online")
