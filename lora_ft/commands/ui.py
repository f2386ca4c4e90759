"""``lora-ft ui [RUNS_DIR]``: a local web page over the runs folder: the runs, a run's curves and reports,
runs compared, base and tuned model side by side in a chat, and new runs started, stopped and resumed."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from pathlib import Path

from lora_ft import console
from lora_ft.errors import EXIT_OK, UserError

PASSWORD_ENV = "LORA_FT_UI_PASSWORD"


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials(host: str, user: str) -> tuple[str, str] | None:
    """The login the page asks for: none on this machine's own address; another address only with a password the
    user set (the page can start training and read every run, so it is never open to a network by default)."""
    password = os.environ.get(PASSWORD_ENV, "")
    if is_loopback(host):
        return (user, password) if password else None
    if len(password) < 8:
        raise UserError(f"--host {host} would open the page to other machines, and no password is set"
                        + (" (it is shorter than 8 characters)" if password else ""),
                        fix=f"set one first: export {PASSWORD_ENV}='a long secret' (the login is user "
                        f"{user!r} and that password), or leave --host out to serve only this machine (127.0.0.1)")
    return user, password


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run(args) -> int:
    runs_dir = Path(args.runs_dir).expanduser()
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is a file, not a folder of runs", fix="give the folder your runs are in")
    runs_dir.mkdir(parents=True, exist_ok=True)
    auth = credentials(args.host, args.user)
    if not _port_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is in use (another lora-ft ui, or another program)",
                        fix=f"choose another: lora-ft ui {args.runs_dir} --port {args.port + 1}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    if importlib.util.find_spec("gradio") is None:
        raise UserError("lora-ft ui needs Gradio, which is not installed",
                        fix="bash scripts/setup.sh --ui (or: pip install 'lora-ft[ui]')")
    from lora_ft.ui.app import CSS, build
    from lora_ft.ui.pages import Pages

    console.quiet_libraries()
    page = build(Pages(runs_dir))
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    console.say(f"lora-ft ui: {url} (runs in {runs_dir.resolve()}"
                + (f"; login {auth[0]!r} with the password in {PASSWORD_ENV})" if auth else ")")
                + ". Ctrl-C stops the page; training it started goes on.")
    page.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, auth=auth, allowed_paths=[str(runs_dir.resolve())],
        inbrowser=args.open, share=False, quiet=True, show_error=False, ssr_mode=False,
        footer_links=[], mcp_server=False, css=CSS)
    return EXIT_OK
