"""Evaluating a finished run: held-out loss and perplexity of base and tuned model, and answers side by side."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lora_ft import data as data_lib
from lora_ft.config import DatasetSource, LoadedConfig
from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic
from lora_ft.rundir.finished import FinishedRun
from lora_ft.tokenization import IGNORE, ChatRenderer
from lora_ft import console


@dataclass
class EvalReport:
    run_dir: str
    data: str
    samples: int
    trained_tokens: int
    base_loss: float
    tuned_loss: float
    answers: list[dict] = field(default_factory=list)
    preference: dict | None = None  # preference runs: how base and tuned rank the held-out pairs
    before: str = "base"  # what the tuned model is compared with

    @property
    def base_perplexity(self) -> float:
        return math.exp(self.base_loss)

    @property
    def tuned_perplexity(self) -> float:
        return math.exp(self.tuned_loss)

    def table(self) -> str:
        loss = "eval loss" if self.preference is None else "chosen-answer loss"
        rows = [("model", loss, "perplexity"),
                (self.before, f"{self.base_loss:.4f}", f"{self.base_perplexity:.2f}"),
                ("tuned", f"{self.tuned_loss:.4f}", f"{self.tuned_perplexity:.2f}"),
                ("change", f"{self.tuned_loss - self.base_loss:+.4f}",
                 f"{100 * (self.tuned_perplexity / self.base_perplexity - 1):+.1f}%")]
        if self.preference is not None:
            p = self.preference
            rows += [("", "", ""), ("pairs", "prefers chosen", "reward acc. / margin"),
                     (self.before, f"{p['prefers_chosen_start']:.1%}", "-"),
                     ("tuned", f"{p['prefers_chosen_tuned']:.1%}",
                      f"{p['reward_accuracy']:.1%} / {p['reward_margin']:+.3f}")]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [f"# Evaluation of {self.run_dir}", "",
                 f"Data: {self.data} ({self.samples} samples, {self.trained_tokens:,} answer tokens scored).", "",
                 "| model | eval loss | perplexity |", "| --- | --- | --- |",
                 f"| {self.before} | {self.base_loss:.4f} | {self.base_perplexity:.2f} |",
                 f"| tuned | {self.tuned_loss:.4f} | {self.tuned_perplexity:.2f} |", ""]
        if self.preference is not None:
            p = self.preference
            parts += [f"Held-out pairs ({p['pairs']}): the share whose chosen answer the model finds more likely "
                      "per token, and DPO's implicit reward of the tuned model against the starting one "
                      f"(beta {p['beta']:g}).", "",
                      "| model | prefers chosen | reward accuracy | reward margin |", "| --- | --- | --- | --- |",
                      f"| {self.before} | {p['prefers_chosen_start']:.1%} | | |",
                      f"| tuned | {p['prefers_chosen_tuned']:.1%} | {p['reward_accuracy']:.1%} | "
                      f"{p['reward_margin']:+.3f} |", ""]
        for index, item in enumerate(self.answers, start=1):
            parts += [f"## Sample {index}", "", f"**Prompt:** {item['prompt']}", "",
                      f"**Reference:** {item['reference']}", "", f"**Base:** {item['base']}", "",
                      f"**Tuned:** {item['tuned']}", ""]
        return "\n".join(parts)


REPORT_FILES = ("report.json", "report.md")


def check_report_free(out_dir: Path) -> None:
    """Refuse to write over an earlier evaluation's report (merge and export refuse in the same case)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder", fix="give a folder for the report")
    taken = [name for name in REPORT_FILES if (out_dir / name).exists()]
    if taken:
        raise UserError(f"{out_dir} already holds an evaluation report ({', '.join(taken)}); lora-ft does not "
                        "write over it", fix=f"choose another folder with --out (e.g. --out {out_dir}-2), or move "
                        "the old report away")


def eval_data(run: FinishedRun, data_file: str | None) -> tuple[data_lib.LoadedData, str]:
    """The data to evaluate on, as the eval split: a given file, or the run's own eval data (files or the same
    held-out split); and what it is, in words."""
    config = run.config.model_copy(deep=True)
    if data_file:
        if not Path(data_file).exists():
            raise UserError(f"--data {data_file} does not exist", fix="give a data file (jsonl, json, csv, parquet)")
        source = DatasetSource(path=str(Path(data_file).resolve()))
        samples, report = data_lib.read_dataset(source, LoadedConfig(config, None, []), config.data.system_prompt)
        data_lib.check_drops([report], config.data.max_dropped_fraction)
        if report.dropped:
            for line in report.summary_lines():
                console.say(line)
        return data_lib.LoadedData(train=[], eval=samples, reports=[report], eval_source=data_file), data_file
    loaded_data = data_lib.load_data(LoadedConfig(config, None, []))
    if not loaded_data.eval:
        raise UserError("the run has no eval data", fix="pass --data FILE with held-out samples")
    return loaded_data, loaded_data.eval_source


def prepared_eval(run: FinishedRun, data_file: str | None):
    """The eval data tokenized as the run trained (its max_seq_length, train_on, overlength) with the tokenizer
    and chat template saved with its adapter."""
    from lora_ft import inference
    from lora_ft.model import BaseModelSource, ChatTokenizer
    from lora_ft.preparation import prepare

    loaded_data, source = eval_data(run, data_file)
    tokenizer = inference.load_tokenizer(run)
    chat = ChatTokenizer(source=BaseModelSource(path=str(run.adapter_dir), display_name=run.base_name),
                         tokenizer=tokenizer, pad_note=f"pad token: {tokenizer.pad_token!r}",
                         template_origin="saved with the adapter",
                         renderer=ChatRenderer(tokenizer, tokenizer.chat_template))
    with console.silenced():
        prepared = prepare(LoadedConfig(run.config, None, []), run.config, data=loaded_data, chat=chat, checks=False)
    return prepared, source


def sequence_logps(model, input_ids: list[list[int]], labels: list[list[int]], batch_size: int = 8) -> list[float]:
    """The summed log-probability of each sequence's labelled tokens."""
    import torch

    sums: list[float] = []
    for start in range(0, len(input_ids), batch_size):
        ids_batch, lab_batch = input_ids[start:start + batch_size], labels[start:start + batch_size]
        width = max(len(x) for x in ids_batch)
        ids = torch.zeros(len(ids_batch), width, dtype=torch.long)
        lab = torch.full((len(ids_batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros(len(ids_batch), width, dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids_batch, lab_batch)):
            ids[row, : len(x)], lab[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        targets = lab[:, 1:].to(logits.device)
        logps = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums += (picked * (targets != IGNORE)).sum(dim=1).tolist()
    return sums


def eval_loss(model, input_ids: list[list[int]], labels: list[list[int]], batch_size: int = 8) -> float:
    """Mean cross-entropy per trained token, over padded batches."""
    count = sum(1 for row in labels for t in row if t != IGNORE)
    return -sum(sequence_logps(model, input_ids, labels, batch_size)) / max(count, 1)


def evaluate_run(run: FinishedRun, *, data_file: str | None = None, samples_to_show: int = 3,
                 max_new_tokens: int = 160, out_dir: Path | None = None, base: str | None = None) -> EvalReport:
    from lora_ft import inference

    out_dir = Path(out_dir) if out_dir else run.run_dir / "eval"
    check_report_free(out_dir)  # before the slow part
    from lora_ft import preference_eval

    prepared, source = prepared_eval(run, data_file)
    samples, tokenizer, tokens = prepared.data.eval, prepared.chat.tokenizer, prepared.eval_tokens
    input_ids, labels = tokens.input_ids, tokens.labels
    if prepared.is_preference:  # the loss of the chosen answers: are the preferred answers still likely?
        input_ids, labels = tokens.side("chosen")
    if not input_ids:
        raise UserError("no eval sample has an answer to score", fix="check the eval data")
    scored = sum(1 for row in labels for t in row if t != IGNORE)
    console.say(f"evaluating on {source}: {len(input_ids)} samples, {scored:,} answer tokens")
    model = inference.load_tuned(run, base)
    started = time.time()
    preference = None
    with preference_eval.starting_model(model, run) as before:
        base_loss = eval_loss(model, input_ids, labels)
        start_scores = preference_eval.pair_scores(model, tokens) if prepared.is_preference else None
    tuned_loss = eval_loss(model, input_ids, labels)
    if start_scores is not None and start_scores.chosen:
        beta = getattr(run.config.method_settings, "beta", 0.1)
        preference = preference_eval.reward_summary(start_scores, preference_eval.pair_scores(model, tokens), beta)
    console.say(f"losses computed in {time.time() - started:.0f} s (tuned against the {before}); generating "
                f"{samples_to_show} answers ...")
    answers = []
    for sample in [s for s in samples if s.messages][:samples_to_show]:
        prompt = sample.messages if sample.is_preference else sample.messages[:-1]
        reference = (sample.chosen or sample.rejected if sample.is_preference else sample.messages)[-1]["content"]
        with preference_eval.starting_model(model, run):
            base_answer, _ = inference.generate(model, tokenizer, run, prompt, max_new_tokens)
        tuned_answer, stopped = inference.generate(model, tokenizer, run, prompt, max_new_tokens)
        answers.append({"location": sample.location, "prompt": prompt[-1]["content"],
                        "reference": reference, "base": base_answer, "tuned": tuned_answer,
                        "tuned_stopped_at_end_of_turn": stopped})
    report = EvalReport(run_dir=str(run.run_dir), data=source, samples=len(input_ids), trained_tokens=scored,
                        base_loss=base_loss, tuned_loss=tuned_loss, answers=answers, preference=preference,
                        before="base" if run.config.model.adapter is None else "start")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_report_free(out_dir)  # still free: nothing is written over
    payload = {**asdict(report), "base_perplexity": report.base_perplexity,
               "tuned_perplexity": report.tuned_perplexity}
    write_text_atomic(out_dir / "report.json", json.dumps(payload, indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", report.markdown())
    console.say(report.table())
    for item in answers:
        console.say(f"\nprompt:    {item['prompt'][:200]}")
        console.say(f"reference: {item['reference'][:300]}")
        console.say(f"base:      {item['base'][:300]}")
        console.say(f"tuned:     {item['tuned'][:300]}")
    console.say(f"\nreport: {out_dir / 'report.md'} and report.json")
    return report
