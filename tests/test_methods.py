"""Training methods are a registry (lora_ft/methods/): each is one module, nothing else branches on a method's name,
and a method brought by a file outside the package -- through the `lora_ft.methods` entry point, as a package
installed beside lora-ft brings one -- is validated, trained, saved and described like the built-in ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from lora_ft.methods import registry

from .conftest import REPO, write_config

PACKAGE = REPO / "lora_ft"

# IPO as a method of its own (the DPO trainer with the IPO loss), in a file that knows nothing of lora-ft's
# internals but the method registry and the config section base
EXTERNAL_METHOD = '''
from pydantic import Field

from lora_ft.sections import Section
from lora_ft.methods import TrainingMethod


class IpoSection(Section):
    """Identity Preference Optimisation (method: ipo)."""

    beta: float = Field(0.1, gt=0, description="The IPO regulariser: higher keeps the policy nearer the reference.")


def build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common, callbacks):
    from trl import DPOConfig, DPOTrainer

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    args = DPOConfig(**common, beta=cfg.ipo.beta, loss_type=["ipo"], max_length=None, dataset_num_proc=None)
    return PreTokenized(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                        processing_class=tokenizer, callbacks=callbacks)


METHOD = TrainingMethod(
    name="ipo", description="Identity Preference Optimisation (IPO) on preference pairs", reads=("pairs",),
    section=IpoSection, pairs=True, sequences_per_sample=2, padding_free=False, loss_name="ipo loss",
    build_trainer=build_trainer, has_reference=True, reference_forwards=lambda cfg: 1,
    columns=lambda t: {"prompt_ids": t.prompt_ids, "chosen_ids": t.chosen_ids, "rejected_ids": t.rejected_ids},
)
'''


def test_each_built_in_method_is_one_module_of_the_registry():
    methods = registry()
    assert list(methods)[:4] == ["sft", "dpo", "orpo", "kto"]
    for name, method in methods.items():
        assert (PACKAGE / "methods" / f"{name}.py").is_file() and method.name == name


def test_nothing_outside_the_registry_branches_on_a_methods_name():
    branch = re.compile(r"""method\s*(==|!=|not in|in)\s*[("']|METHOD_KINDS|PREFERENCE_METHODS|\.method\s*==""")
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if "methods" not in path.relative_to(PACKAGE).parts
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if branch.search(line)]
    assert found == [], "branches on a method's name outside lora_ft/methods:\n" + "\n".join(found)


def _plugin(tmp_path: Path) -> dict:
    """A file outside the package, and the distribution metadata that names it under the entry point."""
    site = tmp_path / "site"
    (site / "lora_ft_ipo-0.1.dist-info").mkdir(parents=True)
    (site / "lora_ft_ipo.py").write_text(EXTERNAL_METHOD, encoding="utf-8")
    (site / "lora_ft_ipo-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lora-ft-ipo\nVersion: 0.1\n", encoding="utf-8")
    (site / "lora_ft_ipo-0.1.dist-info" / "entry_points.txt").write_text(
        "[lora_ft.methods]\nipo = lora_ft_ipo:METHOD\n", encoding="utf-8")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def _lora_ft(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_ft", *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=REPO)


def test_a_method_from_a_file_outside_the_package_is_validated_trained_and_described(
        tiny_llama, preference_data, tmp_path):
    env = _plugin(tmp_path)
    config = write_config(tmp_path / "ipo.yaml", tiny_llama, preference_data,
                          extra="method: ipo\nipo:\n  beta: 0.2\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text(config.read_text().replace("  beta: 0.2", "  betta: 0.2"), encoding="utf-8")
    refused = _lora_ft(env, "validate", str(typo))
    assert refused.returncode == 2 and "unknown key 'ipo.betta'" in refused.stderr and "'beta'" in refused.stderr
    misnamed = _lora_ft(env, "validate", str(config), "--set", "method=ipoo")
    assert misnamed.returncode == 2 and "ipo" in misnamed.stderr, misnamed.stderr

    trained = _lora_ft(env, "train", str(config), "--set", "train.max_steps=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "ipo" and saved["ipo"] == {"beta": 0.2}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2
    card = (run / "adapter" / "README.md").read_text()
    assert "Identity Preference Optimisation (IPO) on preference pairs (beta 0.2)" in card
    assert "eval ipo loss" in card
    # without the plugin the saved run's method is unknown, and said so
    plain = {**os.environ, "PYTHONPATH": str(REPO)}
    unknown = _lora_ft(plain, "validate", str(config))
    assert unknown.returncode == 2 and "'method'" in unknown.stderr and "sft" in unknown.stderr
