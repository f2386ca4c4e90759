"""The documentation a user reaches for stays in step with the code."""

from __future__ import annotations

import importlib.util

from .conftest import REPO


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_config_docs", REPO / "scripts" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_matches_the_schema():
    gen = _gen_module()
    assert (REPO / "docs" / "config.md").read_text() == gen.render(), \
        "docs/config.md is out of date: run python scripts/gen_config_docs.py"


def test_config_reference_documents_every_key():
    from lora_ft.config import schema_sections

    text = (REPO / "docs" / "config.md").read_text()
    for _, model in schema_sections():
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in text
            assert field.description, f"{model.__name__}.{name} has no description"


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_test_one():
    first_lines = (REPO / "README.md").read_text().splitlines()[:6]
    train_cmd = "bash scripts/setup.sh && .venv/bin/lora-ft train configs/legal_domain.yaml"
    test_cmd = "bash scripts/setup.sh --dev && .venv/bin/python -m pytest"
    assert any(line.startswith(train_cmd) for line in first_lines)
    assert any(line.startswith(test_cmd) for line in first_lines)
    assert test_cmd in (REPO / ".ci" / "run").read_text()


def test_docs_links_resolve():
    import re

    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+\.md)\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name} links to missing {target}"
