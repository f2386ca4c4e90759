"""Every path a config holds is expanded once, where the config is resolved, and everything a run writes lies under
the folder that carries its mark: a `~` in the YAML (which no shell expands) means the user's home everywhere."""

from __future__ import annotations

import os
from pathlib import Path

from lora_ft import cli
from lora_ft.config import load_config, resolve
from lora_ft.rundir import lock as run_lock

from .conftest import write_config


def _home(monkeypatch, tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_tilde_in_every_path_of_the_config_is_the_home_folder(tiny_llama, legal_data, tmp_path, monkeypatch):
    home = _home(monkeypatch, tmp_path)
    (home / "data").symlink_to(legal_data)
    (home / "model").symlink_to(tiny_llama)
    (home / "t.jinja").write_text("{{ messages }}", encoding="utf-8")
    config = tmp_path / "cfg" / "run.yaml"
    config.parent.mkdir()
    config.write_text(
        "output_dir: ~/out\nmodel:\n  base: ~/model\n  chat_template: ~/t.jinja\n"
        "data:\n  train:\n    - path: ~/data/train.jsonl\n  eval:\n    - path: ~/data/eval.jsonl\n"
        "  max_seq_length: 128\n  cache_dir: ~/tokens\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = resolve(load_config(config), has_cuda=False).config
    assert cfg.output_dir == str(home / "out")
    assert cfg.model.base == str(tiny_llama.resolve())  # symlinks followed, as for every local path
    assert cfg.model.chat_template == str(home / "t.jinja")
    assert cfg.data.train[0].path == str(legal_data.resolve() / "train.jsonl")
    assert cfg.data.eval[0].path == str(legal_data.resolve() / "eval.jsonl")
    assert cfg.data.cache_dir == str(home / "tokens")
    assert "~" not in str(cfg.model_dump())


def test_a_relative_output_dir_is_made_absolute_against_the_current_directory(tiny_llama, legal_data, tmp_path,
                                                                              monkeypatch):
    config = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data, output_dir=Path("rel/run"))
    monkeypatch.chdir(tmp_path)
    assert resolve(load_config(config), has_cuda=False).config.output_dir == str(tmp_path / "rel" / "run")


def test_a_run_into_a_tilde_output_dir_writes_only_under_its_marked_folder(tiny_llama, legal_data, tmp_path,
                                                                           monkeypatch, capsys):
    home = _home(monkeypatch, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, output_dir=Path("~/tilde2"),
                          extra="tracking:\n  report_to: [tensorboard]\n")
    before_home = set(home.rglob("*"))
    assert cli.main(["train", str(config), "--set", "train.max_steps=2", "--set", "train.save_steps=1"]) == 0
    run_dir = home / "tilde2"
    assert (run_dir / run_lock.MARK_FILE).is_file() and (run_dir / "adapter").is_dir()
    assert not (work / "~").exists() and list(work.iterdir()) == [], "nothing written in the current directory"
    written = set(home.rglob("*")) - before_home
    stray = [p for p in written if p != run_dir and run_dir not in p.parents]
    assert stray == [], f"files written outside the marked run directory: {stray}"
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.rglob("*"))
    assert (run_dir / "checkpoints").is_dir()


def test_planted_files_in_a_tilde_output_dir_are_never_overwritten(tiny_llama, legal_data, tmp_path, monkeypatch,
                                                                   capsys):
    home = _home(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    planted = home / "tilde2" / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"the user's own file")
    readme = home / "tilde2" / "checkpoints" / "README.md"
    readme.write_text("mine", encoding="utf-8")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, output_dir=Path("~/tilde2"))
    assert cli.main(["train", str(config), "--set", "train.max_steps=1"]) == 2
    assert "not empty and lora-ft did not make it" in capsys.readouterr().err
    assert planted.read_bytes() == b"the user's own file" and readme.read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "~").exists()
    assert os.listdir(home / "tilde2") == ["checkpoints"]


def test_an_output_dir_that_is_a_dangling_symlink_is_named_not_file_exists(tiny_llama, legal_data, tmp_path, capsys):
    link = tmp_path / "run-link"
    link.symlink_to(tmp_path / "gone" / "run")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, output_dir=link)
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link to" in err and "which does not exist" in err and "File exists" not in err
    assert link.is_symlink() and not (tmp_path / "gone").exists()
