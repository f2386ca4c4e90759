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
from lora_ft import console


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
_OFFLINE_FIX = ("or log offline (WANDB_MODE=offline, or tracking.wandb_fallback: offline: upload later with "
                "`wandb sync`), or remove wandb from tracking.report_to")


@dataclass
class _WandbSetup:
    """What W&B will use, resolved as wandb itself does, without touching the network."""

    mode: str | None  # WANDB_MODE, or the settings file `wandb offline` / `wandb online` writes
    url: str  # WANDB_BASE_URL, or the one `wandb login --host` writes, else W&B cloud
    key: str | None = None  # never printed, never written
    key_source: str = ""  # where the key came from, for messages: WANDB_API_KEY, a netrc path
    token_file: str | None = None  # WANDB_IDENTITY_TOKEN_FILE (no API key: workload identity)


def _settings_error(exc: Exception) -> UserError:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # a pydantic ValidationError: name the setting, not a page of pydantic text
        names = ["_".join(map(str, e.get("loc", ()))) for e in errors()]
        what = "; ".join(f"{name} (WANDB_{name.upper()}): {e.get('msg')}" if name else str(e.get("msg"))
                         for name, e in zip(names, errors()))
    else:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"a W&B setting is invalid: {what}",
                     fix="correct it in the environment (WANDB_MODE, WANDB_BASE_URL, ...) or in the wandb settings "
                     "files (~/.config/wandb/settings, ./wandb/settings), or remove wandb from tracking.report_to")


def _wandb_settings() -> tuple[str | None, str, str | None]:
    """(mode, server URL, API key from a settings file) as wandb resolves them: the global and workspace settings
    files, then the WANDB_* environment. A value wandb would refuse is a UserError now, not a traceback later."""
    env_mode = os.environ.get("WANDB_MODE") or None
    env_url = os.environ.get("WANDB_BASE_URL") or None
    try:
        from wandb.sdk.wandb_settings import Settings
    except ImportError:  # another wandb layout: the environment alone
        return env_mode, (env_url or DEFAULT_WANDB_URL).rstrip("/"), None
    try:
        settings = Settings()
        config_dir = os.environ.get("WANDB_CONFIG_DIR")
        settings.settings_system = str(Path(config_dir).expanduser() / "settings" if config_dir
                                       else Path("~/.config/wandb/settings").expanduser())
        settings.update_from_system_settings()  # reports and skips a broken settings file itself
        file_key = settings.api_key
        # the key and token are checked below, with a message of their own
        settings.update_from_env_vars({k: v for k, v in os.environ.items()
                                       if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")})
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, wandb's UsageError
        raise _settings_error(exc) from None
    return settings.mode, str(settings.base_url).rstrip("/"), file_key


def _netrc_key(url: str) -> tuple[str | None, str]:
    """The key `wandb login` wrote for the server, found as wandb finds it: the NETRC file, else ~/.netrc, else
    ~/_netrc; the entry for the server's host[:port], else (W&B cloud behind CoreWeave Forge) for api.wandb.ai."""
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("NETRC"):
        path = Path(os.environ["NETRC"]).expanduser()
    else:
        path = Path("~/.netrc").expanduser()
        if not path.exists() and Path("~/_netrc").expanduser().exists():
            path = Path("~/_netrc").expanduser()
    try:
        from wandb.sdk.lib.urls import forge_upstream_url
    except ImportError:
        def forge_upstream_url(url: str) -> str:
            return url
    try:
        entries = netrc.netrc(str(path))
    except (OSError, netrc.NetrcParseError):
        return None, str(path)
    entry = entries.authenticators(urlsplit(url).netloc) or \
        entries.authenticators(urlsplit(forge_upstream_url(url)).netloc)
    return (entry[2] or None) if entry else None, str(path)


def _wandb_setup() -> _WandbSetup:
    mode, url, file_key = _wandb_settings()
    setup = _WandbSetup(mode=mode, url=url)
    if os.environ.get("WANDB_API_KEY"):
        setup.key, setup.key_source = os.environ["WANDB_API_KEY"], "WANDB_API_KEY"
    elif os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        setup.token_file = os.environ["WANDB_IDENTITY_TOKEN_FILE"]
    else:
        setup.key, setup.key_source = _netrc_key(url)
        if setup.key is None and file_key:
            setup.key, setup.key_source = file_key, "the wandb settings file"
    return setup


def _wandb_url() -> str:
    return _wandb_settings()[1]


def wandb_has_credentials() -> bool:
    """Whether W&B would find an API key or an identity token file (then runs go online unless told otherwise)."""
    try:
        setup = _wandb_setup()
    except UserError:
        return True  # wandb.init reports the bad setting itself, turned into a UserError by start_trackers
    return setup.key is not None or setup.token_file is not None


def _key_format_problem(key: str) -> str | None:
    """W&B's own rule for what an API key looks like (checked locally, no network)."""
    if key != key.strip():
        return "it starts or ends with whitespace (a newline copied with it?)"
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # moved in another wandb version: the server check below still decides
        return None
    return check_api_key(key)


KEY_FIX = "get your key at https://wandb.ai/authorize (or your server's /authorize page) and run `wandb login` " \
          "(or set WANDB_API_KEY; a self-hosted server also needs WANDB_BASE_URL or `wandb login --host URL`)"


def _ssl_context():
    """Certificates as W&B's clients trust them: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, SSL_CERT_FILE (read by
    OpenSSL itself), or none checked with WANDB_INSECURE_DISABLE_SSL."""
    import ssl

    if os.environ.get("WANDB_INSECURE_DISABLE_SSL", "").lower() in ("1", "true", "yes"):
        return ssl._create_unverified_context()  # noqa: S323 - the user asked W&B not to verify either
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle if bundle and os.path.isfile(bundle) else None)


def _server_problem(key: str | None, timeout: float = CHECK_SECONDS, url: str | None = None) \
        -> tuple[str | None, str]:
    """Ask the W&B server who owns ``key`` within ``timeout`` seconds: (what is wrong or None, how to fix it).
    Without a key (an identity token, exchanged by wandb itself) only whether the server answers is checked."""
    import base64
    import json
    import socket
    import ssl
    import urllib.error
    import urllib.request

    url = url or _wandb_url()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": "{ viewer { id } }"}).encode(),
                                     headers=headers)
    network_fix = ("check the network (behind a proxy: HTTPS_PROXY) and WANDB_BASE_URL (a self-hosted server's "
                   "address; unset for W&B cloud)")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_ssl_context()) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if key is None:
            return None, ""  # it answered: the identity token is wandb's to exchange
        if exc.code in (401, 403):
            return f"the W&B server at {url} rejected the API key (HTTP {exc.code})", KEY_FIX
        if exc.code == 404:
            return f"{url} answered HTTP 404: it is not a W&B server's API address", network_fix
        return f"the W&B server at {url} answered HTTP {exc.code}", \
            "W&B may be down (https://status.wandb.ai): try again later, " + network_fix
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return f"the TLS certificate of the W&B server at {url} is not trusted ({reason.verify_message})", \
                "point REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) at your organisation's CA certificates"
        return f"cannot reach the W&B server at {url} ({reason})", network_fix
    except ValueError:
        if key is None:
            return None, ""
        return f"{url} gave an answer that is not JSON: it is not a W&B server's API address", network_fix
    if key is None:
        return None, ""
    if not (isinstance(answer, dict) and (answer.get("data") or {}).get("viewer")):
        return f"the W&B server at {url} does not accept the API key", KEY_FIX
    return None, ""


def _server_check(key: str | None, timeout: float | None = None, url: str | None = None) -> tuple[str | None, str]:
    """:func:`_server_problem` with ``timeout`` (default CHECK_SECONDS) bounding the whole check: the socket
    timeout alone covers neither the name lookup (a resolver without network can take tens of seconds) nor a
    server that answers slowly."""
    import threading

    timeout = CHECK_SECONDS if timeout is None else timeout
    url = url or _wandb_url()
    result: list = []

    def check() -> None:
        try:
            result.append(_server_problem(key, timeout, url))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            result.append(exc)

    worker = threading.Thread(target=check, daemon=True, name="lora-ft-wandb-check")
    worker.start()
    worker.join(timeout + 1.0)
    if not result:
        return (f"no answer from the W&B server at {url} within {timeout:g} s",
                "check the network (behind a proxy: HTTPS_PROXY) and WANDB_BASE_URL")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def preflight(cfg: RunConfig) -> str | None:
    """Decide, in seconds and before anything heavy starts, how W&B will log; pass the answer to
    :func:`start_trackers` as ``wandb_mode``.

    Returns None when W&B is not in ``tracking.report_to``; the mode W&B is set to (WANDB_MODE or ``wandb
    offline``) when that is offline, dryrun or disabled (nothing is checked); ``online`` (or ``shared``) when the
    key is well formed and the server accepts it. No key, a malformed or rejected key, or a server that does not
    answer within CHECK_SECONDS is, with ``tracking.wandb_fallback: offline`` (the default), ``offline`` and one
    line said; with ``error``, a UserError (exit 2). The key is never printed."""
    if "wandb" not in cfg.tracking.report_to:
        return None
    setup = _wandb_setup()
    if setup.mode in NO_CHECK_MODES:
        return setup.mode
    online = setup.mode or "online"
    if setup.token_file is not None:
        if not os.access(setup.token_file, os.R_OK):
            raise UserError(f"WANDB_IDENTITY_TOKEN_FILE names {setup.token_file}, which cannot be read",
                            fix="point it at the identity token file, or unset it and use an API key (`wandb login`)")
        problem, fix = _server_check(None, url=setup.url)
    elif setup.key is None:
        problem, fix = (f"no API key found for {setup.url} (WANDB_API_KEY, or `wandb login` in "
                        f"{_netrc_key(setup.url)[1]})", KEY_FIX)
    elif key_problem := _key_format_problem(setup.key):
        problem, fix = f"the W&B API key in {setup.key_source} is malformed: {key_problem.rstrip('.')}", KEY_FIX
    elif os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        problem, fix = ("both WANDB_API_KEY and WANDB_IDENTITY_TOKEN_FILE are set, which W&B refuses",
                        "unset one of them")
    else:
        problem, fix = _server_check(setup.key, url=setup.url)
    if problem is None:
        return online
    if cfg.tracking.wandb_fallback == "offline":
        console.say(f"warning: W&B: {problem}; this run logs offline under the run directory (upload later with "
            "`wandb sync`; tracking.wandb_fallback: error stops instead)")
        return "offline"
    raise UserError(f"W&B is not usable: {problem}", fix=f"{fix}; {_OFFLINE_FIX}")


def wandb_id_file(run_dir: Path) -> Path:
    """Where a run keeps its W&B run id, so a resumed run (or a later evaluation) logs into the same W&B run."""
    return run_dir / "wandb" / "lora-ft-run-id"


def wandb_run_settings(cfg: RunConfig, run_dir: Path) -> dict:
    """``wandb.init`` settings for the run's own W&B run: resumed by its saved id when it has one."""
    id_file = wandb_id_file(run_dir)
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    return dict(id=run_id, resume="allow" if run_id else None, project=cfg.tracking.project,
                name=cfg.tracking.run_name, tags=cfg.tracking.tags or None, dir=str(run_dir),
                reinit="finish_previous")


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
        if wandb_mode is None and mode in (None, "offline") and not wandb_has_credentials():
            mode = "offline"
            trackers.notes.append("W&B: no API key found (WANDB_API_KEY or `wandb login`), so the run is "
                                  "logged offline")
        id_file = wandb_id_file(run_dir)
        id_file.parent.mkdir(parents=True, exist_ok=True)
        settings = wandb_run_settings(cfg, run_dir) | {"config": {"lora_ft": resolved_config}}
        run_id = settings["id"]
        try:
            run = wandb.init(mode=mode, **settings)
        except Exception as exc:  # noqa: BLE001 - wandb raises its own error types (auth, comm, usage)
            if mode in NO_CHECK_MODES or cfg.tracking.wandb_fallback != "offline":
                raise UserError(f"W&B could not start: {exc}",
                                fix="run with WANDB_MODE=offline, or remove wandb from tracking.report_to") from None
            trackers.notes.append(f"W&B could not start online ({exc}); the run is logged offline")
            mode = "offline"
            try:
                run = wandb.init(mode=mode, **settings)
            except Exception as exc2:  # noqa: BLE001
                raise UserError(f"W&B could not start, not even offline: {exc2}",
                                fix="remove wandb from tracking.report_to, or check that the run directory is "
                                "writable") from None
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
