"""The house rules of docs/architecture.md, and its "add one file" promises, proven.

The import graph is read from the code itself (``ast``), never from a list kept by hand: an arrow A -> B for every
``import`` and ``from ... import`` in module A, at any level (inside a function or under ``if TYPE_CHECKING`` too:
a lazy import is still a dependency), relative imports resolved. ``from lora_ft.x import name`` is an arrow to
``lora_ft.x.name`` when that is a module, else to ``lora_ft.x`` itself (for a package, its ``__init__.py``, which
re-exports the name). Importing a module of a package also runs that package's ``__init__.py``, so an arrow into
``lora_ft.x.y`` from outside ``lora_ft.x`` is an arrow to the package ``lora_ft.x`` as well: a package whose
``__init__.py`` re-exports its modules is as high as the highest of them. Imports that ``importlib`` makes (the
extension folders found by :func:`lora_ft.plugins.discover`) are not arrows: a folder's modules are found, not
imported by name.
"""

import argparse
import ast
import json
import tomllib
from pathlib import Path

import pytest

from lora_ft import cli, families, formats
from lora_ft.config import load_config
from lora_ft.data import load_data
from lora_ft.exports import targets
from lora_ft.planning import shape_from_config
from lora_ft.samples import Sample, required_text

PACKAGE = Path(__file__).resolve().parent.parent / "lora_ft"


@pytest.fixture
def restore_registries():
    saved = (dict(formats.registry()), dict(targets.registry()), dict(families.registry()))
    yield
    for registry, before in zip((formats.registry(), targets.registry(), families.registry()), saved):
        registry.clear()
        registry.update(before)


# The floors of the house, from the ground up: a module may import from its own floor and the floors below it,
# never from a floor above. A module is on the floor of the longest name listed that it starts with.
LAYERS: list[tuple[str, ...]] = [
    # what every step uses: errors, what a person reads, files, finding an extension folder's modules, several
    # processes, the embedded model, a finished run's adapter files; the strict base of every config section
    ("lora_ft.errors", "lora_ft.console", "lora_ft.files", "lora_ft.plugins", "lora_ft.distributed",
     "lora_ft.embedded", "lora_ft.adapter_files", "lora_ft.sections", "lora_ft.batched_decoding"),
    # what a config may name: a sample and the data formats, the model families, the chat templates, the methods,
    # and what the methods' rewards score answers by
    ("lora_ft.samples", "lora_ft.tool_turns", "lora_ft.conversations", "lora_ft.formats", "lora_ft.families",
     "lora_ft.templates", "lora_ft.tool_template", "lora_ft.methods", "lora_ft.answer_metrics",
     "lora_ft.tool_call_text", "lora_ft.rewards"),
    ("lora_ft.config",),  # the run configuration: read, checked against the above, resolved
    ("lora_ft.data",),  # the run's data read as its config says, and turned into tokens
    ("lora_ft.model",),  # the base model, its tokenizer, LoRA
    ("lora_ft.tokenized",),  # the tokens on disk
    ("lora_ft.training",),  # the training loop
    ("lora_ft.rundir",),  # the run directory: lock, resume, checkpoints, the finished run
    # the steps the commands share
    ("lora_ft.preparation", "lora_ft.planning", "lora_ft.inference", "lora_ft.tracking", "lora_ft.launching"),
    ("lora_ft.evaluation", "lora_ft.data_report"),  # `lora-ft eval`, `lora-ft data`
    ("lora_ft.exports",),  # `lora-ft merge`, `lora-ft export`
    ("lora_ft.ui",),  # `lora-ft ui`: the web page over the run directories (runs the commands as processes)
    ("lora_ft.commands",),  # one module per command
    ("lora_ft.cli", "lora_ft.__main__"),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, dict[str, int]]:
    """Every module of lora_ft -> {module of lora_ft it imports: the line of the first such import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        if name == "lora_ft":
            continue  # lora_ft/__init__.py holds the version and imports nothing
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        arrows: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import lora_ft.x.y` names lora_ft.x.y
                    target = target.rpartition(".")[0]
                # the module, and each package around it that the importer is not inside (its __init__ runs)
                while target and target != "lora_ft":
                    if not (name == target or name.startswith(target + ".")):
                        arrows.setdefault(target, node.lineno)
                    target = target.rpartition(".")[0]
        graph[name] = arrows
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def floor_of(module: str) -> int | None:
    matches = [(len(prefix), floor) for floor, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def test_no_command_imports_another_and_no_component_imports_a_command():
    graph = import_graph()  # cli runs a command by its name (importlib), when it runs
    imports = [f"{a} -> {b}" for a, targets in sorted(graph.items()) for b in targets
               if b.startswith("lora_ft.commands.")]
    assert not imports, imports


def test_no_module_imports_another_that_imports_it_back():
    graph = import_graph()
    cycles = [[f"{a} -> {b} (line {graph[a][b]})" for a in cycle for b in graph[a] if b in cycle]
              for cycle in _cycles(graph)]
    assert not cycles, "\n\n".join("\n".join(cycle) for cycle in cycles)


def test_every_module_imports_only_from_its_floor_and_below():
    graph = import_graph()
    unplaced = sorted(module for module in graph if floor_of(module) is None)
    assert not unplaced, f"put these modules on a floor in LAYERS: {unplaced}"
    upward = [f"{a} (floor {floor_of(a)}) -> {b} (floor {floor_of(b)}), line {line}"
              for a, targets in sorted(graph.items()) for b, line in targets.items() if floor_of(b) > floor_of(a)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "lora_ft.config" in graph["lora_ft.data.loading"]  # from lora_ft.config import ...: the package
    assert "lora_ft.model.loading" in graph["lora_ft.model"]  # a package's __init__ re-exporting its modules
    assert "lora_ft.cli" in graph["lora_ft.__main__"]
    assert "lora_ft.config" in graph["lora_ft.commands.validate"]  # an import inside a function


def test_the_floors_in_docs_architecture_are_the_floors_checked_here():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    picture = text.split("## The floors of the house", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    drawn = {int(line.split()[0]): line.split()[1:] for line in picture.splitlines() if line.strip()}

    def shown(module: str) -> str:  # lora_ft.x as the picture names it: x/ for a package, x.py for a module
        path = PACKAGE.parent.joinpath(*module.split("."))
        return f"{path.name}/" if path.is_dir() else f"{path.name}.py"

    assert drawn == {floor: [shown(m) for m in modules] for floor, modules in enumerate(LAYERS, start=1)}


def test_every_package_is_installed():
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(path.parent.relative_to(PACKAGE.parent).parts) for path in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set(), "add them to [tool.setuptools] packages in pyproject.toml"


def test_every_module_stays_readable():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
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
