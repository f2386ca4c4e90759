"""The house rules of docs/architecture.md, and its three "add one file" promises, proven."""

import argparse
import ast
import json
from pathlib import Path

import pytest

from lora_ft import cli
from lora_ft.config import load_config
from lora_ft.data import formats, load_data
from lora_ft.data.samples import Sample, required_text
from lora_ft.exports import targets
from lora_ft.model import families
from lora_ft.planning import shape_from_config

PACKAGE = Path(__file__).resolve().parent.parent / "lora_ft"


@pytest.fixture
def restore_registries():
    saved = (dict(formats.registry()), dict(targets.registry()), dict(families.registry()))
    yield
    for registry, before in zip((formats.registry(), targets.registry(), families.registry()), saved):
        registry.clear()
        registry.update(before)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_command_imports_another_and_no_component_imports_a_command():
    for path in PACKAGE.rglob("*.py"):
        commands = {name for name in _imports(path) if name.startswith("lora_ft.commands.")}
        if path.parent.name == "commands":
            assert not commands, f"{path.name} imports {commands}"
        else:
            assert not commands, f"{path.relative_to(PACKAGE)} imports a command: {commands}"


def test_every_module_stays_readable():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_components_say_things_through_the_console_only():
    printing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if p.name not in ("console.py", "cli.py") and p.parent.name != "commands"
                and any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert not printing, printing


def test_a_data_format_is_one_module(tmp_path, tiny_llama, restore_registries):
    def detects(row: dict) -> bool:
        return "question" in row and "answer" in row

    def to_sample(row: dict) -> Sample:
        return Sample("", messages=[{"role": "user", "content": required_text(row, "question", "question")},
                                    {"role": "assistant", "content": required_text(row, "answer", "answer")}])

    formats.register(formats.DataFormat("qa", ("question", "answer"), detects, to_sample, order=35))
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is clause {i}?", "answer": f"Clause {i} is binding."})
                            + "\n" for i in range(6)) + json.dumps({"question": "no answer", "answer": ""}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{base: {tiny_llama}}}\ndata:\n  train: [{{path: {data}}}]\n  eval_fraction: 0\n"
                      "  max_dropped_fraction: 0.5\n  max_seq_length: 256\n")
    loaded = load_data(load_config(config))  # detected from its columns
    assert loaded.reports[0].format == "qa" and len(loaded.train) == 6
    assert loaded.train[0].messages[1]["content"] == "Clause 0 is binding."
    assert list(loaded.reports[0].dropped) == ["empty answer"]  # its faults are counted like any format's
    config.write_text(config.read_text().replace(f"{{path: {data}}}", f"{{path: {data}, format: qa}}"))
    assert load_config(config).config.data.train[0].format == "qa"  # and accepted by name


def test_an_unknown_format_is_refused_with_the_formats_that_exist(tmp_path, tiny_llama):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{base: {tiny_llama}}}\ndata:\n  train: [{{path: x.jsonl, format: alpaka}}]\n"
                      "  max_seq_length: 256\n")
    with pytest.raises(Exception) as exc:
        load_config(config)
    assert "alpaka" in str(exc.value.render()) and "did you mean 'alpaca'" in exc.value.render()
    assert all(name in exc.value.render() for name in formats.format_names())


def test_an_export_target_is_one_module(tmp_path, restore_registries, monkeypatch):
    seen = {}

    def export(run, out: Path, args) -> dict:
        out.mkdir(parents=True)
        (out / "model.txt").write_text(f"{run.run_dir.name} {args.flavour}")
        seen["out"] = out
        return {"format": "toy", "passed": True}

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--flavour", default="plain")

    targets.register(targets.ExportTarget("toy", "a toy target", export, add_arguments))
    run_dir = tmp_path / "run"

    class Run:
        pass

    run = Run()
    run.run_dir = run_dir
    run_dir.mkdir()
    (run_dir / ".lora-ft-run").write_text("{}")
    monkeypatch.setattr("lora_ft.rundir.finished.open_run", lambda path: run)
    assert cli.main(["export", str(run_dir), "--format", "toy", "--flavour", "sour"]) == 0
    assert (run_dir / "export-toy" / "model.txt").read_text() == "run sour"


def test_a_model_family_is_one_module(restore_registries):
    toy = {"architectures": ["ToyForCausalLM"], "width": 64, "depth": 3, "window": 256, "vocab_size": 100}

    def shape(config: dict) -> families.ModelShape:
        w = config["width"]
        return families.ModelShape(w, 4 * w, config["depth"], 4, 4, config["vocab_size"], True, config["window"],
                                   {"proj_in": (w, 4 * w), "proj_out": (4 * w, w)})

    assert families.family_of(toy) is None
    families.register(families.ModelFamily("toy", ("ToyForCausalLM",), ("width", "depth"), shape,
                                           layers=lambda c: c["depth"], context_length=lambda c: c["window"]))
    assert families.family_of(toy).name == "toy"
    planned = shape_from_config(toy)
    assert planned.layers == 3 and planned.linear_params == 3 * 2 * 64 * 256
    assert families.gguf_family(toy) is None  # no GGUF rules: the export says so before merging
