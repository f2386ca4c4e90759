"""Publishing a finished run's export on the Hugging Face Hub (``lora-ft push``), through ``huggingface_hub``.

Everything that can be checked here is checked before the first request: the repo name (the Hub's own rules,
``huggingface_hub.utils.validate_repo_id``), the export folder and its check file, and a token. Then: who the token
belongs to (a bare repo name goes to that namespace), the repo created private unless asked otherwise (an existing
public repo is refused unless ``--public`` says publishing is meant), and one commit holding the export's files and
the model card (``hub_card``), so the repo shows all of them or none.

The upload is ``HfApi.create_commit``: files the Hub already holds are not sent again when the same command runs
after an interruption (see docs/serving.md, "Publishing to the Hub", for what resumes). Nothing is written locally:
the model card and the adapter config for the Hub are uploaded from memory, and the token is passed to
``huggingface_hub`` only, never said or written.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lora_ft import console
from lora_ft.errors import EXIT_FAILURE, UserError
from lora_ft.exports.checks import CHECK_FILE
from lora_ft.rundir.finished import FinishedRun

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_FIX = ("log in with `hf auth login` (a token with write access, from {endpoint}/settings/tokens), or set "
             "HF_TOKEN=hf_... in the environment of this command")


@dataclass(frozen=True)
class Artifact:
    name: str  # what `lora-ft push --artifact` calls it
    export_format: str  # the `lora-ft export --format` that writes its folder
    library_name: str | None  # the model card's library_name
    relation: str  # the model card's base_model_relation
    tags: tuple[str, ...] = ()  # tags beyond lora-ft, lora and the method


ARTIFACTS = {a.name: a for a in (Artifact("adapter", "peft", "peft", "adapter"),
                                 Artifact("merged", "merged", "transformers", "finetune"),
                                 Artifact("gguf", "gguf", "gguf", "finetune", ("gguf",)))}


class HubUnreachable(UserError):
    """The Hub could not be reached or failed (a network fault, a 5xx after retries): not the user's input, so
    the exit code of a failure; the same command resumes."""

    exit_code = EXIT_FAILURE


@dataclass
class ExportFolder:
    artifact: Artifact
    path: Path
    files: list[Path]  # what is uploaded from it, the model card aside
    check: dict = field(default_factory=dict)  # its export_check.json

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass
class Pushed:
    repo_id: str
    url: str
    revision: str
    private: bool
    commit: str
    files: int  # in the commit, the model card included
    size: int  # bytes
    unchanged: bool  # the repo already held these files: no new commit was made


def check_repo_name(name: str) -> str:
    """``name`` if the Hub would accept it as a repo id (``user/name``, ``org/name`` or a bare ``name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise UserError(f"--repo {name!r} is not a valid Hub repo name: {exc}",
                        fix="use NAMESPACE/NAME or NAME: letters, digits, '-', '_' and '.', at most 96 characters "
                        "each, not starting or ending with '-' or '.', no '--' or '..', e.g. --repo "
                        "your-name/legal-lora") from None
    return name


def find_export(run: FinishedRun, artifact_name: str, folder: str | Path | None = None) -> ExportFolder:
    """The finished export of ``artifact_name`` (``RUN/export-FORMAT`` unless ``folder`` names one), or an error
    that gives the command that writes it."""
    artifact = ARTIFACTS[artifact_name]
    path = Path(folder) if folder else run.run_dir / f"export-{artifact.export_format}"
    command = f"lora-ft export {run.run_dir} --format {artifact.export_format}"
    if folder:
        command += f" --out {path}"
    check_file = path / CHECK_FILE
    if not check_file.is_file():
        state = "does not exist" if not path.exists() else f"has no {CHECK_FILE} (its export did not finish)"
        raise UserError(f"no {artifact.name} export to push: {path} {state}",
                        fix=f"export it first: {command}"
                        + (f" (after moving the unfinished {path} away)" if path.exists() else ""))
    try:
        check = json.loads(check_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {check_file}: {exc}", fix=f"export again: {command}") from None
    if check.get("format") != artifact.export_format:
        raise UserError(f"{path} holds a {check.get('format')!r} export, not {artifact.export_format!r}",
                        fix=f"pass the folder of the {artifact.export_format} export, or write one: {command}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "README.md"
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if check.get("passed") is False:
        console.warn(f"the export's own check did not pass ({check_file}): it is pushed as it is")
    return ExportFolder(artifact, path, files, check)


def find_token() -> str:
    """The token of ``HF_TOKEN`` or of ``hf auth login`` (huggingface_hub's own order), never said or written."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: pushing needs one with write access, and none was found",
                        fix=TOKEN_FIX.format(endpoint=DEFAULT_ENDPOINT))
    return token


def endpoint_of(url: str | None) -> str:
    """The Hub's address: ``url`` (``--endpoint``), else ``HF_ENDPOINT`` as huggingface_hub read it."""
    from huggingface_hub import constants

    endpoint = (url or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise UserError(f"--endpoint {url!r} is not an http(s) address", fix="e.g. --endpoint https://huggingface.co")
    if constants.is_offline_mode():
        raise UserError("huggingface_hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): it "
                        "sends no request", fix="run the push without HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1")
    return endpoint


def _hub_file(path: Path, base_id: str | None) -> bytes | str:
    """What to upload for ``path``: the file itself, except the adapter's config, whose base model is named by its
    hub id (a local path means nothing to whoever downloads the adapter)."""
    if path.name != "adapter_config.json" or base_id is None:
        return str(path)
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    return (json.dumps(config, indent=2) + "\n").encode()


def push(run: FinishedRun, export: ExportFolder, repo: str, *, token: str, endpoint: str, private: bool,
         revision: str) -> Pushed:
    """Create the repo (private unless ``private`` is False), then commit the export's files and the model card
    to ``revision`` in one commit. Every fault the Hub or the network gives becomes a one-screen error."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import logging as hub_logging

    from lora_ft import __version__
    from lora_ft.exports import hub_card

    hub_logging.set_verbosity_error()  # its retry and skip notices are noise here; the summary says what happened
    api = HfApi(endpoint=endpoint, token=token, library_name="lora-ft", library_version=__version__)
    with hub_errors(endpoint, repo, revision):
        repo_id = _full_repo_id(api, repo, endpoint)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        before = api.repo_info(repo_id, revision=revision, repo_type="model")
        if private and not before.private:
            raise UserError(f"{repo_id} already exists and is public: pushing would publish these files",
                            fix="pass --public to push to it anyway, or choose another --repo name")
        if not private and before.private:
            console.note(f"{repo_id} already exists and is private; it stays private (change it in the repo's "
                         "settings on the Hub)")
    base_id = hub_card.base_model_id(run)
    relative = [p.relative_to(export.path).as_posix() for p in export.files]
    card = hub_card.hub_model_card(run, export.artifact.name, repo_id, export.artifact.library_name,
                                   export.artifact.relation, export.artifact.tags, relative,
                                   hub_card.export_figures(export.path))
    if not hub_card.base_license(run, base_id):
        console.note("the model card names no license: the base model's is not known here; set it on the Hub "
                     "(a fine-tune's license follows its base model's and its data's)")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=_hub_file(path, base_id))
                  for name, path in zip(relative, export.files)]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    size = export.size + len(card.encode())
    console.say(f"uploading {len(operations)} files ({_size(size)}) to {repo_id} ({revision}) ...")
    with hub_errors(endpoint, repo_id, revision, uploading=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        commit = api.create_commit(repo_id, operations, repo_type="model", revision=revision,
                                   commit_message=f"lora-ft push: {export.artifact.name} of run {run.run_dir.name}",
                                   commit_description=f"Uploaded by lora-ft {__version__} (`lora-ft push`).")
    for warning in caught:
        if "metadata in README.md" in str(warning.message):
            console.warn(f"the Hub warns about the model card: {warning.message}")
    url = f"{endpoint}/{repo_id}" + ("" if revision == "main" else f"/tree/{revision}")
    return Pushed(repo_id, url, revision, bool(before.private), commit.oid, len(operations), size,
                  unchanged=commit.oid == before.sha)


def _full_repo_id(api, repo: str, endpoint: str) -> str:
    """``repo`` with its namespace: a bare name goes to the token owner's. A read-only token is refused here,
    before anything is created."""
    me = api.whoami()
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise UserError("the Hugging Face token can only read: pushing needs write access",
                        fix=TOKEN_FIX.format(endpoint=endpoint))
    return repo if "/" in repo else f"{me['name']}/{repo}"


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def summary(pushed: Pushed, export: ExportFolder) -> str:
    """The push in a table: where, what, how much, who may see it, and the commit."""
    unchanged = "nothing changed: the repo already held these files, so no commit was made\n"
    rows = [("repo", pushed.url), ("artifact", f"{export.artifact.name} (from {export.path})"),
            ("files", f"{pushed.files} (the model card README.md included)"), ("size", _size(pushed.size)),
            ("visibility", "private" if pushed.private else "public"), ("branch", pushed.revision),
            ("commit", pushed.commit)]
    return (unchanged if pushed.unchanged else "") + console.table(rows)


def _token_source() -> str:
    return "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the login of `hf auth login`"


@contextmanager
def hub_errors(endpoint: str, repo: str, revision: str, uploading: bool = False):
    """Every fault of a request to the Hub as a one-screen error with its fix, never a traceback. While
    ``uploading``, a fault of the upload machinery (hf_xet's, or a wrapped one) is the upload's too."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - sorted below; anything not the Hub's goes on as it was
        error = _hub_error(exc, endpoint, repo, revision, uploading)
        if error is None:
            raise
        raise error from None


def _hub_error(exc: BaseException, endpoint: str, repo: str, revision: str, uploading: bool = False,
               during: str = "") -> UserError | None:
    """The one-screen error for a fault of huggingface_hub or the network, or None for any other exception."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        import httpx2 as http_library  # huggingface_hub 2's HTTP client
    except ImportError:
        import httpx as http_library  # huggingface_hub 1's

    again = "run the same command again: files the Hub already received are not sent again"
    if isinstance(exc, RuntimeError) and exc.__cause__ is not None:  # an LFS upload's fault, named by its file
        cause = _hub_error(exc.__cause__, endpoint, repo, revision, uploading, during=f"{exc} ")
        if cause is not None or not uploading:
            return cause
    if type(exc).__module__.partition(".")[0] == "hf_xet" or (uploading and isinstance(exc, RuntimeError)):
        if isinstance(exc, PermissionError):  # hf_xet's XetAuthenticationError
            return UserError(f"the Hub's storage refused the token from {_token_source()} ({exc})",
                             fix=TOKEN_FIX.format(endpoint=endpoint))
        return HubUnreachable(f"{during}the upload failed: {type(exc).__name__}: {exc}",
                              fix=f"check the network, then {again}")
    if isinstance(exc, http_library.TransportError):
        return HubUnreachable(f"{during}cannot reach the Hub at {endpoint}: {type(exc).__name__}: {exc}",
                              fix=f"check the network (and --endpoint or HF_ENDPOINT), then {again}")
    if isinstance(exc, RevisionNotFoundError):
        return UserError(f"{during}the branch {revision!r} of {repo} was not found on the Hub",
                         fix="check --revision (lora-ft creates a missing branch from main)")
    if isinstance(exc, RepositoryNotFoundError):
        return UserError(f"{during}{repo} was not found on the Hub, or this token may not see it",
                         fix="check --repo, and that the token has write access to its namespace")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code
        said = f"{status}: {exc.server_message or str(exc).splitlines()[0]}"
        if during:  # a file's upload to storage (an expired upload address answers 403): the rerun starts it anew
            return HubUnreachable(f"{during}The upload was refused ({said})", fix=again)
        if status == 401:
            return UserError(f"{during}the Hub refused the token from {_token_source()} ({said})",
                             fix=TOKEN_FIX.format(endpoint=endpoint))
        if status == 403:
            return UserError(f"{during}this token may not write to {repo} ({said})",
                             fix="use a token with write access to that namespace (a fine-grained token needs "
                             "write on it; an organization's repo needs a role that may write), or push to your "
                             "own namespace")
        if status == 429:
            return HubUnreachable(f"{during}the Hub is rate-limiting this account ({said})",
                                  fix=f"wait a few minutes, then {again}")
        if status >= 500:
            return HubUnreachable(f"{during}the Hub failed ({said})", fix=f"wait a little, then {again}")
        return UserError(f"{during}the Hub refused the request ({said})",
                         fix="check --repo and --revision; the message above is the Hub's")
    if isinstance(exc, ValueError) and "metadata in README.md" in str(exc):
        return UserError(f"the Hub refused the model card's metadata: {exc}",
                         fix="report it to lora-ft with the message above")
    if isinstance(exc, ValueError):  # an answer huggingface_hub cannot read: not a Hub at that address
        return HubUnreachable(f"{during}the Hub's answer was not understood: {exc}",
                              fix=f"check --endpoint (it must be a Hugging Face Hub), then {again}")
    return None
