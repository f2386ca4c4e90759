"""W&B is checked before anything heavy: a bad key or an unreachable server is an error (exit 2) or, by default, an
offline run that says so; never a traceback after the model has loaded, never a two-minute hang."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from lora_ft import cli, tracking
from lora_ft.config import load_config
from lora_ft.errors import UserError

from .conftest import write_config

GOOD_FORMAT_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def wandb_config(tiny_llama, legal_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))

    def make(fallback: str = "offline"):
        config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data,
                              extra=f"tracking:\n  report_to: [wandb]\n  wandb_fallback: {fallback}\n")
        return load_config(config).config

    return make


def _server(status: int, body: dict):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
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


def test_a_malformed_key_is_an_error_or_an_offline_run(wandb_config, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    with pytest.raises(UserError) as exc:
        tracking.preflight(wandb_config("error"), say=lambda _: None)
    assert "malformed" in exc.value.title and "not-a-key" not in exc.value.render()
    said = []
    assert tracking.preflight(wandb_config(), say=said.append) == "offline"
    assert "logs offline" in said[0] and "not-a-key" not in said[0]


def test_an_unreachable_server_is_decided_in_seconds(wandb_config, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the W&B server"):
        tracking.preflight(wandb_config("error"), say=lambda _: None)
    assert time.monotonic() - started < 30, "not W&B's own retries (107 s measured)"
    assert tracking.preflight(wandb_config(), say=lambda _: None) == "offline"


def test_a_key_the_server_rejects_or_accepts(wandb_config, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    rejecting = _server(401, {"errors": ["unauthorized"]})
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{rejecting.server_port}")
    with pytest.raises(UserError, match=r"rejected the API key \(HTTP 401\)"):
        tracking.preflight(wandb_config("error"), say=lambda _: None)
    rejecting.shutdown()
    accepting = _server(200, {"data": {"viewer": {"id": "VXNlcjox"}}})
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{accepting.server_port}")
    assert tracking.preflight(wandb_config("error"), say=lambda _: None) == "online"
    accepting.shutdown()


def test_offline_mode_and_no_wandb_need_no_check(wandb_config, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no server check in offline mode")

    monkeypatch.setattr(tracking, "_server_problem", no_network)
    monkeypatch.setenv("WANDB_API_KEY", GOOD_FORMAT_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.preflight(wandb_config("error"), say=lambda _: None) == "offline"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE")
    assert tracking.preflight(wandb_config("error"), say=lambda _: None) == "offline"  # no key: offline, said later


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
