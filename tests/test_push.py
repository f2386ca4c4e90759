"""``lora-ft push``: a finished run's export uploaded to a Hub, against a local server that answers the Hub's upload
API as huggingface_hub 2.4.0 calls it (``tests/hub_server.py``).

A push that reaches the server runs as its own process (``python -m lora_ft push``), as a user runs it:
huggingface_hub reads ``HF_HUB_OFFLINE`` (which this suite's conftest sets) and ``HF_HUB_DISABLE_XET`` once, when it
is imported, and the local server speaks plain LFS only, so the push needs an environment of its own. Checks that
end before the first request (repo names, a missing export) run in this process through ``run_cli``.

The GGUF push is tested on a folder laid out as ``lora-ft export --format gguf`` writes it (``model-*.gguf``,
``Modelfile``, ``export_check.json``, a README), made by the test itself: that export is being rewritten, and
what is under test here is the push, not the export.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lora_ft import cli

from .conftest import REPO, build_llama, build_tokenizer, legal_rows, run_cli, write_config, write_jsonl
from .hub_server import HubServer

TOKEN = "hf_test_write_token"


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> Path:
    """A tiny finished run whose base model folder carries a README with a license, with its peft and merged
    exports written by the real export code, and a GGUF export folder laid out as that export writes it."""
    from lora_ft.commands import train as pipeline
    from lora_ft.config import load_config

    root = tmp_path_factory.mktemp("push-run")
    base = root / "base"
    build_llama(base, len(build_tokenizer(base)), layers=2)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# a tiny base\n")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", legal_rows(8))
    write_jsonl(data / "eval.jsonl", legal_rows(4, offset=100))
    pipeline.train(load_config(write_config(root / "run.yaml", base, data, output_dir=root / "run"),
                               ["train.max_steps=2"]))
    run = root / "run"
    for target in ("peft", "merged"):
        assert cli.main(["export", str(run), "--format", target]) == 0
    gguf = run / "export-gguf"
    gguf.mkdir()
    for name, size in (("model-f16.gguf", 300_000), ("model-q8_0.gguf", 160_000)):
        (gguf / name).write_bytes(b"GGUF" + os.urandom(size))
    (gguf / "Modelfile").write_text('FROM ./model-q8_0.gguf\nPARAMETER stop "<|im_end|>"\n')
    (gguf / "README.md").write_text("# the export's own README, with local paths\n\n## Files and how close each is "
                                     "to f16\n\n| type | file |\n| q8_0 | model-q8_0.gguf |\n\n## Run it\n")
    (gguf / "export_check.json").write_text(json.dumps({"format": "gguf", "passed": None, "loader": "test",
                                                        "files": ["model-f16.gguf", "model-q8_0.gguf"]}))
    return run


@pytest.fixture(scope="module")
def embedded_run(exported_run, tmp_path_factory) -> Path:
    """The same run as if trained on the embedded model (its config and manifest say so), with a hub dataset among
    its eval data: the card's base model, license and datasets as most users' runs get them, without fetching
    the embedded model."""
    from lora_ft import embedded

    run = tmp_path_factory.mktemp("embedded") / "legal-run"
    shutil.copytree(exported_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["base"] = "embedded"
    config["data"]["eval"].append({"path": "example-org/legal-qa", "split": "test"})
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["base_model"].update(name=f"{embedded.MODEL_NAME} (embedded)", upstream=embedded.UPSTREAM_ID)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture
def hub():
    server = HubServer()
    yield server
    server.close()


def push(tmp_path: Path, run: Path, *args: str, endpoint: str, token: str | None = TOKEN,
         **env: str) -> subprocess.CompletedProcess:
    """``lora-ft push`` in a process of its own, with a Hugging Face home of its own (no stored login)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGING_FACE_")) and k != "TRANSFORMERS_OFFLINE"}
    clean.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", **env)
    if token is not None:
        clean["HF_TOKEN"] = token
    result = subprocess.run([sys.executable, "-m", "lora_ft", "push", str(run), *args, "--endpoint", endpoint],
                            cwd=REPO, env=clean, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _card(content: bytes):
    from huggingface_hub import ModelCard

    return ModelCard(content.decode())


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_an_adapter_is_pushed_private_with_its_files_and_a_model_card(embedded_run, hub, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in _files_under(embedded_run)}
    result = push(tmp_path, embedded_run, "--repo", "alice/legal-lora", endpoint=hub.url)
    assert result.returncode == 0, result.stderr
    assert {p: p.stat().st_mtime_ns for p in _files_under(embedded_run)} == before, "the run is left as it was"
    assert hub.state.create_payloads == [{"name": "legal-lora", "organization": "alice", "visibility": "private",
                                          "type": "model"}]
    repo = hub.state.repos["alice/legal-lora"]
    assert repo.private
    files = repo.files()
    export = embedded_run / "export-peft"
    local = {p.name: p.read_bytes() for p in export.iterdir() if p.is_file() and p.name != "README.md"}
    assert set(files) == {".gitattributes", "README.md", *local}
    for name, content in local.items():
        if name != "adapter_config.json":
            assert files[name] == content, name  # the bytes that arrived are the local ones
    adapter_config = json.loads(files["adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub.state.lfs_puts and all(len(oid) == 64 for oid in hub.state.lfs_puts)  # the weights went by LFS
    card = _card(files["README.md"])
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert {"lora-ft", "lora", "sft"} <= set(card.data.tags) and "gguf" not in card.data.tags
    assert card.data.datasets == ["example-org/legal-qa"]  # a hub dataset; the local files are not datasets
    assert 'AutoPeftModelForCausalLM.from_pretrained("alice/legal-lora")' in card.text
    assert "## Results" in card.text and "## Training" in card.text and "`train.jsonl`" in card.text
    assert str(embedded_run.parent.parent) not in card.text, "no local paths in a published card"
    # the token went to the server, and nowhere else
    assert {r.authorization for r in hub.state.requests if not r.path.startswith("/lfs-upload/")} == \
        {f"Bearer {TOKEN}"}
    assert TOKEN not in result.stdout + result.stderr
    for path in _files_under(embedded_run) + _files_under(tmp_path):
        assert TOKEN.encode() not in path.read_bytes(), path
    for shown in ("alice/legal-lora", "private", repo.branches["main"], "files"):
        assert shown in result.stdout
    # the same push again: nothing is uploaded and no commit is made
    puts, commits = len(hub.state.lfs_puts), hub.state.commits
    again = push(tmp_path, embedded_run, "--repo", "alice/legal-lora", endpoint=hub.url)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert (len(hub.state.lfs_puts), hub.state.commits) == (puts, commits)


def test_a_merged_model_and_gguf_files_are_pushed_with_their_library(exported_run, hub, tmp_path):
    assert push(tmp_path, exported_run, "--repo", "merged-model", "--artifact", "merged",
                endpoint=hub.url).returncode == 0
    files = hub.state.repos["alice/merged-model"].files()  # a bare name goes to the token owner's namespace
    for path in (exported_run / "export-merged").iterdir():
        if path.name != "README.md":
            assert files[path.name] == path.read_bytes(), path.name
    card = _card(files["README.md"])
    assert card.data.library_name == "transformers" and card.data.license == "mit"  # the local base's README
    assert card.data.base_model is None  # a local base folder has no hub id to name
    assert 'AutoModelForCausalLM.from_pretrained("alice/merged-model")' in card.text

    result = push(tmp_path, exported_run, "--repo", "alice/legal-gguf", "--artifact", "gguf", endpoint=hub.url)
    assert result.returncode == 0, result.stderr
    files = hub.state.repos["alice/legal-gguf"].files()
    gguf = exported_run / "export-gguf"
    assert set(files) == {".gitattributes", "README.md", "Modelfile", "export_check.json", "model-f16.gguf",
                          "model-q8_0.gguf"}
    assert all(files[n] == (gguf / n).read_bytes() for n in ("model-f16.gguf", "model-q8_0.gguf", "Modelfile"))
    card = _card(files["README.md"])
    assert card.data.library_name == "gguf" and "gguf" in card.data.tags
    assert "llama-cli -m model/model-f16.gguf" in card.text and "ollama create" in card.text
    assert "the export's own README" not in card.text and "## Run it" not in card.text
    assert "## Files and how close each is to f16" in card.text and "| q8_0 | model-q8_0.gguf |" in card.text


def test_an_upload_cut_after_its_files_resumes_without_sending_them_again(exported_run, hub, tmp_path):
    hub.state.fail_commits = 1
    first = push(tmp_path, exported_run, "--repo", "alice/resumed", endpoint=hub.url)
    assert first.returncode == 1
    assert "the Hub failed (500" in first.stderr and "run the same command again" in first.stderr
    repo = hub.state.repos["alice/resumed"]
    assert set(repo.files()) == {".gitattributes"}, "a failed commit shows no file"
    assert len(hub.state.lfs_puts) == 1  # the weights arrived before the commit failed
    second = push(tmp_path, exported_run, "--repo", "alice/resumed", endpoint=hub.url)
    assert second.returncode == 0, second.stderr
    assert len(hub.state.lfs_puts) == 1, "the weights the server holds are not sent again"
    weights = (exported_run / "export-peft" / "adapter_model.safetensors").read_bytes()
    assert repo.files()["adapter_model.safetensors"] == weights


def test_an_upload_cut_between_two_files_sends_only_the_missing_one(exported_run, hub, tmp_path):
    hub.state.fail_lfs_puts_after = 1  # the second GGUF file's upload is refused, as an expired upload URL is
    first = push(tmp_path, exported_run, "--repo", "alice/partial", "--artifact", "gguf", endpoint=hub.url)
    assert first.returncode == 1 and "The upload was refused (403" in first.stderr and ".gguf" in first.stderr
    assert "run the same command again" in first.stderr
    assert len(hub.state.lfs_puts) == 1 and hub.state.commits == 0
    hub.state.fail_lfs_puts_after = None
    second = push(tmp_path, exported_run, "--repo", "alice/partial", "--artifact", "gguf", endpoint=hub.url)
    assert second.returncode == 0, second.stderr
    assert len(hub.state.lfs_puts) == 2 and len(set(hub.state.lfs_puts)) == 2, "only the missing file was sent"
    files = hub.state.repos["alice/partial"].files()
    for name in ("model-f16.gguf", "model-q8_0.gguf"):
        assert files[name] == (exported_run / "export-gguf" / name).read_bytes()


def test_without_a_token_nothing_is_sent_and_the_error_says_how_to_log_in(exported_run, hub, tmp_path):
    result = push(tmp_path, exported_run, "--repo", "alice/x", endpoint=hub.url, token=None)
    assert result.returncode == 2 and hub.state.requests == []
    assert "no Hugging Face token" in result.stderr
    assert "hf auth login" in result.stderr and "HF_TOKEN=" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_a_token_the_hub_refuses_or_that_may_not_write_is_a_clear_error(exported_run, hub, tmp_path):
    bad = push(tmp_path, exported_run, "--repo", "alice/x", endpoint=hub.url, token="hf_not_a_real_token")
    assert bad.returncode == 2 and "refused the token from HF_TOKEN (401" in bad.stderr
    assert "hf auth login" in bad.stderr and "hf_not_a_real_token" not in bad.stdout + bad.stderr
    read_only = push(tmp_path, exported_run, "--repo", "alice/x", endpoint=hub.url, token="hf_test_read_token")
    assert read_only.returncode == 2 and "can only read" in read_only.stderr
    foreign = push(tmp_path, exported_run, "--repo", "bob/x", endpoint=hub.url)
    assert foreign.returncode == 2 and "may not write to bob/x (403" in foreign.stderr
    assert hub.state.repos == {} and hub.state.lfs_puts == []


def test_public_repos_branches_and_an_existing_public_repo(exported_run, hub, tmp_path):
    assert push(tmp_path, exported_run, "--repo", "alice/open", "--public", endpoint=hub.url).returncode == 0
    assert hub.state.create_payloads[-1]["visibility"] == "public" and not hub.state.repos["alice/open"].private
    refused = push(tmp_path, exported_run, "--repo", "alice/open", "--revision", "dev", endpoint=hub.url)
    assert refused.returncode == 2 and "already exists and is public" in refused.stderr and "--public" in refused.stderr
    dev = push(tmp_path, exported_run, "--repo", "alice/open", "--public", "--revision", "dev",
               "--artifact", "gguf", endpoint=hub.url)
    assert dev.returncode == 0, dev.stderr
    repo = hub.state.repos["alice/open"]
    assert "model-q8_0.gguf" in repo.files("dev") and "model-q8_0.gguf" not in repo.files("main")
    assert "/alice/open/tree/dev" in dev.stdout and "public" in dev.stdout


def test_an_unreachable_hub_or_offline_mode_is_a_one_screen_error(exported_run, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = push(tmp_path, exported_run, "--repo", "alice/x", endpoint=closed)
    assert result.returncode == 1 and "cannot reach the Hub at" in result.stderr
    offline = push(tmp_path, exported_run, "--repo", "alice/x", endpoint=closed, HF_HUB_OFFLINE="1")
    assert offline.returncode == 2 and "offline mode" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr


@pytest.mark.parametrize("name", ["bad name!", "a/b/c", "x" * 97, "-leading-dash", "two--dashes", "name.git",
                                  "alice/"])
def test_a_repo_name_the_hub_would_refuse_is_refused_before_anything_else(name, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["push", str(tmp_path / "no-run"), f"--repo={name}"])  # = : "-x" is a value
    assert code == 2 and "is not a valid Hub repo name" in err and "fix: use NAMESPACE/NAME" in err
    assert "not a directory" not in err, "the name is checked before the run"


def test_a_missing_export_names_the_command_that_writes_it(exported_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("export-*"))
    code, _, err = run_cli(capsys, ["push", str(run), "--repo", "alice/x", "--artifact", "merged"])
    assert code == 2 and f"export it first: lora-ft export {run} --format merged" in err
    (run / "export-peft").mkdir()  # an export cut short leaves no check file
    code, _, err = run_cli(capsys, ["push", str(run), "--repo", "alice/x"])
    assert code == 2 and "its export did not finish" in err and "--format peft" in err
    code, _, err = run_cli(capsys, ["push", str(run), "--repo", "alice/x", "--export-dir",
                                    str(exported_run / "export-merged")])
    assert code == 2 and "holds a 'merged' export, not 'peft'" in err
