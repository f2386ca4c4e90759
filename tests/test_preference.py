"""Preference tuning (DPO, ORPO, KTO): config, data, tokens, training, the reference, resume, eval and exports."""

import json

import pytest
from safetensors.torch import load_file

from lora_ft import cli
from lora_ft.commands.train import train
from lora_ft.config import load_config
from lora_ft.errors import UserError
from tests.conftest import killed_and_resumed, preference_rows, same_adapter, write_config, write_jsonl

def _config(tmp_path, tiny_llama, data_dir, method="dpo", extra="", name="pref.yaml", output=None, steps=8):
    path = write_config(tmp_path / name, tiny_llama, data_dir, output_dir=output or tmp_path / name.split(".")[0])
    text = path.read_text().replace("max_steps: 3", f"max_steps: {steps}").replace("learning_rate: 1.0e-2",
                                                                                   "learning_rate: 1.0e-3")
    path.write_text(f"method: {method}\n{text}{extra}")
    return path


def _quiet(_line):
    return None


# --- config -----------------------------------------------------------------------------------------------------

def test_a_method_section_under_another_method_is_an_error_at_its_line(tmp_path, tiny_llama, legal_data):
    path = write_config(tmp_path / "c.yaml", tiny_llama, legal_data, extra="dpo:\n  beta: 0.2\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    text = info.value.render()
    assert "dpo settings apply to method: dpo, and this run's method is sft" in text
    line = path.read_text().splitlines().index("dpo:") + 1
    assert f"{path}:{line} (dpo)" in text
    bad = _config(tmp_path, tiny_llama, legal_data, extra="dpo:\n  betta: 0.2\n", name="d.yaml")
    with pytest.raises(UserError, match="did you mean 'beta'"):
        load_config(bad)


def test_method_defaults_and_learning_rate(tmp_path, tiny_llama, preference_data):
    from lora_ft.config import resolve

    path = _config(tmp_path, tiny_llama, preference_data)
    path.write_text(path.read_text().replace("  learning_rate: 1.0e-3\n", ""))
    resolved = resolve(load_config(path))
    assert resolved.config.dpo.beta == 0.1 and resolved.config.dpo.loss_type == "sigmoid"
    assert resolved.config.train.learning_rate == 5e-6  # not SFT's 2e-4
    assert any("reference is the base model" in note for note in resolved.notes)
    kto = _config(tmp_path, tiny_llama, preference_data, method="kto", name="k.yaml")
    kto.write_text(kto.read_text().replace("batch_size: 2", "batch_size: 1"))
    with pytest.raises(UserError, match="KL term"):
        load_config(kto)


# --- data -------------------------------------------------------------------------------------------------------

def test_bad_pairs_are_named_by_file_and_line_and_too_many_stop_the_run(tmp_path, tiny_llama, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = preference_rows(3) + [
        {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Q?", "chosen": "", "rejected": "No."},
        {"prompt": "Q?", "chosen": "Yes."},
        {"prompt": "Q?", "chosen": "Yes.", "rejected": [{"role": "user", "content": "not an answer"}]},
    ]
    write_jsonl(data_dir / "train.jsonl", rows)
    write_jsonl(data_dir / "eval.jsonl", preference_rows(2, offset=50))
    assert cli.main(["train", str(_config(tmp_path, tiny_llama, data_dir))]) == 2
    err = capsys.readouterr().err
    for reason, line in (("chosen and rejected are the same answer", 4), ("empty chosen answer", 5),
                         ("missing field 'rejected'", 6), ("a turn that is not the assistant's", 7)):
        assert reason in err and f"train.jsonl:{line}" in err, (reason, err)


def test_implicit_pairs_with_different_prompts_and_kto_labels(tmp_path, tiny_llama):
    from lora_ft.data import load_data

    def conversation(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", [
        {"chosen": conversation("What is a lien?", "A security interest."),
         "rejected": conversation("What is a lien?", "A lease.")},
        {"chosen": conversation("What is a tort?", "A civil wrong."),
         "rejected": conversation("What is a crime?", "A civil wrong.")},
    ])
    write_jsonl(data_dir / "eval.jsonl", [{"prompt": "Q?", "completion": "A.", "label": "true"},
                                          {"prompt": "Q?", "completion": "B.", "label": 0},
                                          {"prompt": "Q?", "completion": "C.", "label": "maybe"}])
    config = _config(tmp_path, tiny_llama, data_dir, method="kto")
    config.write_text(config.read_text().replace("data:\n", "data:\n  max_dropped_fraction: 0.6\n"))
    data = load_data(load_config(config))
    train_report, eval_report = data.reports
    assert train_report.format == "implicit_preference" and eval_report.format == "unpaired_preference"
    assert "chosen and rejected have different prompts (the turns before the last answer differ)" in \
        " ".join(train_report.summary_lines())
    # KTO splits the pair into a desirable and an undesirable answer
    assert [(s.chosen is not None, s.rejected is not None) for s in data.train] == [(True, False), (False, True)]
    assert [s.chosen is not None for s in data.eval] == [True, False]
    assert eval_report.dropped["label is 'maybe', not true or false"][0].endswith("eval.jsonl:3")


def test_data_of_the_wrong_kind_for_the_method_is_refused(tmp_path, tiny_llama, legal_data, preference_data,
                                                          capsys):
    assert cli.main(["train", str(_config(tmp_path, tiny_llama, legal_data))]) == 2
    assert "holds SFT examples (format alpaca), but this run's method is dpo" in capsys.readouterr().err
    sft = write_config(tmp_path / "sft.yaml", tiny_llama, preference_data)
    assert cli.main(["train", str(sft)]) == 2
    assert "holds preference pairs (format preference), but this run's method is sft" in capsys.readouterr().err


# --- tokens -----------------------------------------------------------------------------------------------------

def test_pairs_are_tokenized_with_the_template_through_the_end_of_turn(chat_tokenizer):
    from lora_ft.data import Sample
    from lora_ft.data.preference_tokens import encode_preferences, fit_preferences
    from lora_ft.data.tokenization import ChatRenderer

    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    sample = Sample("f:1", messages=[{"role": "user", "content": "What is a contract?"}],
                    chosen=[{"role": "assistant", "content": "A binding agreement."}],
                    rejected=[{"role": "assistant", "content": "A lease."}])
    tokens = fit_preferences(encode_preferences([sample], renderer), 512)
    prompt, chosen, rejected = tokens.prompt_ids[0], tokens.chosen_ids[0], tokens.rejected_ids[0]
    eot = renderer.end_of_turn_token_id()
    assert chat_tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert chosen[-1] == eot and rejected[-1] == eot and chosen.count(eot) == 1
    assert chat_tokenizer.decode(chosen) == "A binding agreement.<|im_end|>"
    # a limit that cuts both answers before they differ leaves no preference: the pair is dropped and named
    same_start = fit_preferences([("f:2", [1, 2], [5, 6, 7, 8], [5, 6, 9, 9])], max_length=4)
    assert len(same_start) == 0 and same_start.cut_before_difference == ["f:2"]
    cut = fit_preferences([("f:3", [1, 2], [5, 6, 7, 8], [5, 9, 9])], max_length=4)
    assert cut.chosen_ids == [[5, 6]] and cut.rejected_ids == [[5, 9]] and cut.truncated == 1
    prompt_cut = fit_preferences([("f:4", [1, 2, 3, 4], [5], [6])], max_length=8, max_prompt_length=2)
    assert prompt_cut.prompt_ids == [[3, 4]] and prompt_cut.prompts_cut == 1


@pytest.mark.parametrize("template", ["chatml", "llama3", "alpaca"])
def test_pairs_encoded_in_a_batch_are_those_encoded_one_by_one(chat_tokenizer, template):
    from lora_ft.data import Sample
    from lora_ft.data.preference_tokens import encode_preference, encode_preferences
    from lora_ft.templates import read_chat_template
    from lora_ft.data.tokenization import ChatRenderer

    renderer = ChatRenderer(chat_tokenizer, read_chat_template(template))

    def turn(role, content):
        return [{"role": role, "content": content}]

    samples = []
    for i in range(40):
        prompt = turn("user", f"What is clause {i}?" + " Explain it." * (i % 4))
        if i % 3 == 0:  # a conversation so far, with an earlier answer, under a system prompt
            prompt = turn("system", "Be careful.") + turn("user", "Hi") + turn("assistant", f"Hello {i}") + prompt
        chosen, rejected = turn("assistant", f"It binds both parties {i}."), turn("assistant", "No idea" + "!" * i)
        samples.append(Sample(f"f:{i}", messages=prompt, chosen=None if i % 5 == 1 else chosen,
                              rejected=None if i % 5 == 2 else rejected))
    samples.append(Sample("f:x", messages=turn("user", "Ünïcödé ✓ 合同?"), chosen=turn("assistant", " lead space"),
                          rejected=turn("assistant", "\n\nnewlines\n")))
    assert encode_preferences(samples, renderer) == [(s.location, *encode_preference(s, renderer)) for s in samples]


# --- training ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_each_method_trains_and_its_loss_falls(method, tmp_path, tiny_llama, preference_data):
    result = train(load_config(_config(tmp_path, tiny_llama, preference_data, method=method)), say=_quiet)
    outcome = result.outcome
    assert outcome.eval_loss_after < outcome.eval_loss_before
    losses = [r["loss"] for r in outcome.log if "loss" in r]
    assert losses[-1] < losses[0]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["method"] == method
    card = (result.adapter_dir / "README.md").read_text()
    assert f"lora-ft, {method}]" in card
    if method != "kto":  # pairs: the chosen answer's implicit reward rises above the rejected one's
        assert outcome.rewards_after["accuracy"] > 0.5 and outcome.rewards_after["margin"] > 0
    assert not (result.adapter_dir / "ref").exists()


def test_the_reference_is_the_adapter_off_base_and_no_second_model(tmp_path, tiny_llama, preference_data,
                                                                   monkeypatch):
    import transformers

    from lora_ft.training import build_trainer

    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counted))
    built = []
    monkeypatch.setattr("lora_ft.training.build_trainer", lambda *a, **k: built.append(build_trainer(*a, **k))
                        or built[-1])
    result = train(load_config(_config(tmp_path, tiny_llama, preference_data)), say=_quiet)
    trainer = built[0]
    assert len(loads) == 1, "the base model was loaded once"
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config
    # before training the policy is its reference: every implicit reward is zero, the loss log(2)
    assert result.outcome.rewards_before == {"accuracy": 0.0, "margin": 0.0}
    assert result.outcome.eval_loss_before == pytest.approx(0.6931, abs=1e-4)


def test_dpo_after_sft_compares_with_the_starting_adapter(tmp_path, tiny_llama, legal_data, preference_data):
    sft = train(load_config(write_config(tmp_path / "sft.yaml", tiny_llama, legal_data)), say=_quiet)
    config = _config(tmp_path, tiny_llama, preference_data, name="dpo.yaml")
    config.write_text(config.read_text().replace("model:\n", f"model:\n  adapter: {sft.run_dir}\n"))
    dpo = train(load_config(config), say=_quiet)
    # the reference is the SFT model (a frozen copy of its adapter), so the starting policy scores zero rewards
    assert dpo.outcome.eval_loss_before == pytest.approx(0.6931, abs=1e-4)
    assert dpo.outcome.rewards_after["margin"] > 0
    saved = load_file(dpo.adapter_dir / "adapter_model.safetensors")
    assert not any(".ref." in key for key in saved) and not (dpo.adapter_dir / "ref").exists()
    started = load_file(sft.adapter_dir / "adapter_model.safetensors")
    assert saved.keys() == started.keys()


def test_a_killed_dpo_run_resumes_bitwise_equal(tmp_path, tiny_llama, preference_data):
    config = _config(tmp_path, tiny_llama, preference_data)
    reference, resumed, finished = killed_and_resumed(config, tmp_path, "step:5", "--set", "train.max_steps=8",
                                                      "--set", "train.save_steps=2", "--set", "train.keep_last=3")
    assert "from checkpoint-4 (step 4)" in finished.stdout

    def history(run_dir):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r.get("rewards/margins"), r["grad_norm"]) for r in records if "loss" in r]

    assert history(resumed) == history(reference)
    assert same_adapter(resumed, reference)


# --- after training ---------------------------------------------------------------------------------------------

def test_eval_ranks_pairs_as_training_measured_and_exports_work(tmp_path, tiny_llama, preference_data):
    from lora_ft.evaluation.run import evaluate_run
    from lora_ft.rundir.finished import open_run

    result = train(load_config(_config(tmp_path, tiny_llama, preference_data)), say=_quiet)
    report = evaluate_run(open_run(result.run_dir), samples_to_show=1, max_new_tokens=4)
    assert report.preference["pairs"] == 4
    # answers to the pairs' prompts are scored against the chosen answers; the forgetting check reads general
    # (supervised) data under a preference run
    assert report.domain.tuned.answers == 4 and report.examples[0]["reference"].startswith("Consideration")
    assert report.general is not None and report.general.tuned.answers == 100  # --max-answers default
    # lora-ft eval's reward margin is TRL's eval reward margin, computed independently
    assert report.preference["reward_margin"] == pytest.approx(result.outcome.rewards_after["margin"], rel=1e-3)
    assert report.preference["reward_accuracy"] == result.outcome.rewards_after["accuracy"]
    out = tmp_path / "merged"
    assert cli.main(["export", str(result.run_dir), "--format", "merged", "--dtype", "float32", "--out",
                     str(out)]) == 0
    check = json.loads((out / "export_check.json").read_text())
    assert check["parity_within_tolerance"] is True


def test_data_report_for_pairs(tmp_path, tiny_llama, preference_data, capsys):
    config = _config(tmp_path, tiny_llama, preference_data)
    assert cli.main(["data", str(config), "--set", "data.max_seq_length=40"]) == 0  # a report, not a refusal
    out = capsys.readouterr().out
    assert "chosen answer" in out and "rejected answer" in out and "cut before their answers differ" in out
    assert "(chosen answer" in out and "(rejected answer" in out



@pytest.mark.parametrize("name, method", [("preference", "dpo"), ("implicit_preference", "orpo"),
                                          ("unpaired_preference", "kto")])
def test_the_shipped_preference_examples_read_whole(name, method, tmp_path, tiny_llama):
    from lora_ft.data import load_data
    from tests.conftest import REPO

    path = REPO / "data_templates" / "formats" / f"{name}.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"method: {method}\nmodel: {{base: {tiny_llama}}}\ndata:\n  train: [{{path: {path}}}]\n"
                      "  eval_fraction: 0\n  max_seq_length: 512\n")
    data = load_data(load_config(config))
    report = data.reports[0]
    assert report.format == name and report.dropped_count == 0 and report.kept == report.rows_read


def test_dpo_trains_a_qlora_adapter(tmp_path, tiny_llama, preference_data):
    config = _config(tmp_path, tiny_llama, preference_data, extra="")
    config.write_text(config.read_text().replace("model:\n", "model:\n  quantization: nf4\n"))
    result = train(load_config(config), say=_quiet)
    assert result.outcome.eval_loss_after < result.outcome.eval_loss_before
    assert "quantization: nf4" in (result.run_dir / "config.yaml").read_text()
