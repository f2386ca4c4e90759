"""`model.adapter: RUN_DIR`: a run starts from a finished run's adapter and trains it further."""

import pytest
from safetensors.torch import load_file

from lora_ft import cli
from lora_ft.commands.train import train
from lora_ft.config import load_config
from lora_ft.errors import UserError
from tests.conftest import write_config


def _continue_config(tmp_path, tiny_llama, legal_data, first_run, name="second.yaml", lora_r="4"):
    path = write_config(tmp_path / name, tiny_llama, legal_data, output_dir=tmp_path / name.replace(".yaml", ""))
    text = path.read_text().replace("model:\n", f"model:\n  adapter: {first_run}\n").replace("r: 4", f"r: {lora_r}")
    path.write_text(text)
    return path


@pytest.fixture
def first_run(tmp_path, tiny_llama, legal_data):
    result = train(load_config(write_config(tmp_path / "first.yaml", tiny_llama, legal_data)), say=lambda _: None)
    return result


def test_a_run_starts_where_the_finished_run_ended_and_trains_on(tmp_path, tiny_llama, legal_data, first_run):
    seen = []
    second = train(load_config(_continue_config(tmp_path, tiny_llama, legal_data, first_run.run_dir)),
                   say=seen.append)
    # "before" is the model it starts from: the first run's result, not the base
    assert second.outcome.eval_loss_before == pytest.approx(first_run.outcome.eval_loss_after, rel=1e-5)
    assert any("starting model eval loss" in line for line in seen)
    first = load_file(first_run.adapter_dir / "adapter_model.safetensors")
    trained = load_file(second.adapter_dir / "adapter_model.safetensors")
    assert first.keys() == trained.keys()
    assert any(not (first[k] == trained[k]).all() for k in first), "the adapter was trained further"
    assert "Started from the adapter of the finished run" in (second.adapter_dir / "README.md").read_text()


def test_lora_settings_that_disagree_with_the_adapter_are_refused(tmp_path, tiny_llama, legal_data, first_run):
    config = _continue_config(tmp_path, tiny_llama, legal_data, first_run.run_dir, lora_r="8")
    with pytest.raises(UserError, match=r"lora\.r \(8 here, 4 in the adapter\)"):
        train(load_config(config), say=lambda _: None)


def test_another_base_or_a_folder_that_is_no_finished_run_is_refused(tmp_path, tiny_llama, tiny_gpt2, legal_data,
                                                                      first_run, capsys):
    other_base = _continue_config(tmp_path, tiny_gpt2, legal_data, first_run.run_dir, name="gpt2.yaml")
    with pytest.raises(UserError, match="was trained on"):
        train(load_config(other_base), say=lambda _: None)
    (tmp_path / "not-a-run").mkdir()
    for target, message in ((tmp_path / "not-a-run", "is not a finished lora-ft run"),
                            (tmp_path / "missing", "model.adapter")):
        config = _continue_config(tmp_path, tiny_llama, legal_data, target, name="bad.yaml")
        assert cli.main(["train", str(config)]) == 2
        assert message in capsys.readouterr().err
