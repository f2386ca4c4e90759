"""Experiment trackers: W&B (online or offline), TensorBoard, and the others transformers supports.

Secrets stay in the environment: lora-ft never reads a W&B key or hub token into the config, and the resolved
config logged to a tracker holds none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lora_ft.config import RunConfig
from lora_ft.errors import UserError


@dataclass
class Trackers:
    report_to: list[str]  # names passed to transformers (integrations it sets up itself)
    callbacks: list = field(default_factory=list)  # callbacks lora-ft set up with its own paths
    notes: list[str] = field(default_factory=list)
    wandb_run = None

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


DEFAULT_WANDB_URL = "https://api.wandb.ai"
CHECK_SECONDS = 5.0  # the whole server check; without a network W&B's own client retries for minutes
NO_CHECK_MODES = ("offline", "dryrun", "disabled")


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL).rstrip("/")


def _wandb_key() -> str | None:
    """The API key W&B would use: WANDB_API_KEY, else the netrc entry `wandb login` writes for the server."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    import netrc
    from urllib.parse import urlparse

    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(str(path)).authenticators(urlparse(_wandb_url()).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _wandb_has_credentials() -> bool:
    return _wandb_key() is not None


def _key_format_problem(key: str) -> str | None:
    """W&B's own rule for what an API key looks like (checked locally, no network)."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # moved in another wandb version: the server check below still decides
        return None
    return check_api_key(key)


def _server_problem(key: str, timeout: float = CHECK_SECONDS) -> tuple[str | None, bool]:
    """Ask the W&B server who owns ``key``, within ``timeout`` seconds: (what is wrong or None, reachable)."""
    import base64
    import json
    import socket
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{_wandb_url()}/graphql", data=json.dumps({"query": "{ viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"the W&B server at {_wandb_url()} rejected the API key (HTTP {exc.code})", True
        return f"the W&B server at {_wandb_url()} answered HTTP {exc.code}", True
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot reach the W&B server at {_wandb_url()} ({reason})", False
    except ValueError:
        return f"the W&B server at {_wandb_url()} gave an answer that is not JSON", True
    if not (isinstance(answer, dict) and (answer.get("data") or {}).get("viewer")):
        return f"the W&B server at {_wandb_url()} does not accept the API key", True
    return None, True


def preflight(cfg: RunConfig, say=print) -> str | None:
    """Decide, before anything heavy starts, how W&B will log: ``online``, ``offline`` (or W&B's own WANDB_MODE),
    None when W&B is not configured. A key that is malformed or rejected, or a server that cannot be reached in
    a few seconds, is an error (exit 2) or, with ``tracking.wandb_fallback: offline``, an offline run, said so."""
    if "wandb" not in cfg.tracking.report_to:
        return None
    mode = os.environ.get("WANDB_MODE")
    if mode in NO_CHECK_MODES:
        return mode
    key = _wandb_key()
    if key is None:
        return "offline"  # start_trackers says so: no key configured at all
    problem = _key_format_problem(key)
    if problem:
        problem = f"the W&B API key (WANDB_API_KEY or `wandb login`) is malformed: {problem}"
    else:
        problem, _ = _server_problem(key)
    if problem is None:
        return "online"
    if cfg.tracking.wandb_fallback == "offline":
        say(f"warning: W&B: {problem}; this run logs offline under the run directory (upload later with "
            "`wandb sync`; set tracking.wandb_fallback: error to stop instead)")
        return "offline"
    raise UserError(f"W&B is not usable: {problem}",
                    fix="fix the key (`wandb login`, or WANDB_API_KEY), or log offline with WANDB_MODE=offline or "
                    "tracking.wandb_fallback: offline, or remove wandb from tracking.report_to")


def start_trackers(cfg: RunConfig, run_dir: Path, resolved_config: dict, wandb_mode: str | None = None) -> Trackers:
    """Start the configured trackers with their files under the run directory; ``wandb_mode`` as
    :func:`preflight` decided (None: decide here from the environment alone)."""
    names = [n for n in cfg.tracking.report_to if n != "none"]
    trackers = Trackers(report_to=[n for n in names if n not in ("wandb", "tensorboard")] or ["none"])
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        log_dir = run_dir / "tensorboard"
        trackers.callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir))))
        trackers.notes.append(f"TensorBoard logs: {log_dir}  (view: tensorboard --logdir {log_dir})")
    if "wandb" in names:
        import wandb
        from transformers.integrations import WandbCallback

        mode = wandb_mode or os.environ.get("WANDB_MODE")
        if mode in (None, "offline") and not _wandb_has_credentials():
            mode = "offline"
            trackers.notes.append("W&B: no API key found (WANDB_API_KEY or `wandb login`), so the run is "
                                  "logged offline")
        # A resumed run goes on logging into the same W&B run: its id is kept under the run directory.
        id_file = run_dir / "wandb" / "lora-ft-run-id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        settings = dict(id=run_id, resume="allow" if run_id else None, project=cfg.tracking.project,
                        name=cfg.tracking.run_name, tags=cfg.tracking.tags or None,
                        config={"lora_ft": resolved_config}, dir=str(run_dir), reinit="finish_previous")
        try:
            run = wandb.init(mode=mode, **settings)
        except Exception as exc:  # noqa: BLE001 - wandb raises its own error types (auth, comm, usage)
            if mode == "offline" or cfg.tracking.wandb_fallback != "offline":
                raise UserError(f"W&B could not start: {exc}",
                                fix="run with WANDB_MODE=offline, or remove wandb from tracking.report_to") from None
            trackers.notes.append(f"W&B could not start online ({exc}); the run is logged offline")
            mode = "offline"
            run = wandb.init(mode=mode, **settings)
        trackers.wandb_run = run
        if run_id is None:
            id_file.write_text(run.id + "\n")
        trackers.callbacks.append(WandbCallback())  # reuses the run started above
        if getattr(run, "offline", False) or mode == "offline":
            trackers.notes.append(f"W&B offline run files: {run.dir.rsplit('/files', 1)[0]}  "
                                  f"(upload later: wandb sync {run.dir.rsplit('/files', 1)[0]})")
        else:
            trackers.notes.append(f"W&B run: {run.url}")
    return trackers
