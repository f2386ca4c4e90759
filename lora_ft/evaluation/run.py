"""Evaluating a finished run, base (or starting model) against tuned: held-out loss, answers generated for every
held-out prompt and scored against the references, the same on general instructions (a forgetting check), and
lm-evaluation-harness tasks when asked, and, where the held-out conversations have tools, the calls made at each of
their assistant turns. This module knows the order of those steps; the parts live beside it in ``losses``
(log-probabilities and losses), ``answer_metrics`` (scores), :mod:`lora_ft.inference` (batched generation),
``tool_calls`` (calls read back and scored), ``preferences`` (how held-out pairs are ranked), ``harness``
(lm-evaluation-harness), ``report`` (tables, verdict) and ``tracking`` (the run's trackers)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lora_ft import data as data_lib
from lora_ft.methods import method_of, sections
from lora_ft.config import DatasetSource, LoadedConfig
from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic
from lora_ft.rundir.finished import FinishedRun
from lora_ft.data.tokenization import ChatRenderer
from lora_ft.evaluation.losses import sample_losses, trained_token_counts
from lora_ft import console


REPORT_FILES = ("report.json", "report.md", "samples.jsonl")


def check_report_free(out_dir: Path) -> None:
    """Refuse to write over an earlier evaluation's report (merge and export refuse in the same case)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder", fix="give a folder for the report")
    taken = [name for name in REPORT_FILES if (out_dir / name).exists()]
    if taken:
        raise UserError(f"{out_dir} already holds an evaluation report ({', '.join(taken)}); lora-ft does not "
                        "write over it", fix=f"choose another folder with --out (e.g. --out {out_dir}-2), or move "
                        "the old report away")


# What the eval user can do where a fix would change a setting: eval reads data with the run's own settings
EVAL_ADVICE = {
    "data.max_dropped_fraction": "fix or remove the rows named above in {file}",
    "data.max_seq_length": "shorten or remove the samples named above in {file}",
    "data.overlength": "shorten or remove the samples named above in {file}",
    "data.format": "give {flag} a file whose columns say its format (messages, conversations, instruction/output, "
                   "prompt/completion or text; docs/data.md)",
    "method": "give {flag} a file of the kind this {method} run trained on",
    "data.path": "give {flag} a data file, or a folder of data files in one format",
    "data.cache_dir": "free some disk space in the tokenized-data cache folder, or make it writable",
}
NOT_RUN_SETTINGS = ("data.format", "data.path")  # a file given to eval is read with neither


def eval_fix(error: UserError, run: FinishedRun, flag: str, data_file: str | None) -> str:
    """The fix for an error met reading eval data, in what eval can change: its flags, or training again."""
    file = data_file or "the run's eval data"
    advice = next((EVAL_ADVICE[key] for key in error.settings if key in EVAL_ADVICE), "check the eval data in {file}")
    advice = advice.format(file=file, flag=flag, method=run.config.method)
    if flag not in advice:
        advice += f", or pass {flag} another file" if data_file else f", or pass {flag} FILE with other eval data"
    settings = [key for key in error.settings if key not in NOT_RUN_SETTINGS]
    if not settings:
        return advice
    values = ", ".join(f"{key} = {_setting(run.config, key)}" for key in settings)
    return (f"{advice}; eval reads the data with the run's own settings ({values}) and cannot change "
            f"{'it' if len(settings) == 1 else 'them'}: to change {'it' if len(settings) == 1 else 'them'}, train "
            "the run again")


def _setting(config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part, None)
    return "none" if value is None else value


@contextmanager
def fixes_for_eval(run: FinishedRun, flag: str, data_file: str | None):
    """Errors met reading eval data get fixes the eval user can act on (:func:`eval_fix`)."""
    try:
        yield
    except UserError as exc:
        if exc.settings:
            exc.fix = eval_fix(exc, run, flag, data_file)
        raise


def eval_config(run: FinishedRun, sft: bool = False):
    """The run's config to read and tokenize eval data with; ``sft``: as for supervised data whatever the run's
    method (the general instructions of the forgetting check, under a preference run)."""
    config = run.config.model_copy(deep=True)
    if sft and (method_of(config.method).pairs or method_of(config.method).prompts):
        config = config.model_copy(update={"method": "sft", **{name: None for name in sections()}})
    return config


def eval_data(data_file: str, config) -> data_lib.LoadedData:
    """A given data file to evaluate on, as the eval split, read with the run's settings (:func:`eval_config`)."""
    if not Path(data_file).exists():
        raise UserError(f"--data {data_file} does not exist", fix="give a data file (jsonl, json, csv, parquet)")
    source = DatasetSource(path=str(Path(data_file).resolve()))
    samples, report = data_lib.read_dataset(source, LoadedConfig(config, None, []), config.data.system_prompt)
    data_lib.check_drops([report], config.data.max_dropped_fraction)
    if report.dropped:
        for line in report.summary_lines():
            console.say(line)
    return data_lib.LoadedData(train=[], eval=samples, reports=[report], eval_source=data_file)


def prepared_eval(run: FinishedRun, data_file: str | None, sft: bool = False):
    """The eval data tokenized as the run trained (its max_seq_length, train_on, overlength) with the tokenizer
    and chat template saved with its adapter."""
    from lora_ft import inference
    from lora_ft.model import BaseModelSource, ChatTokenizer
    from lora_ft.preparation import prepare

    config = eval_config(run, sft)
    own_tokens = not data_file  # the run's own eval data (its files, or the same held-out split), from the cache
    loaded_data, source = (None, None) if own_tokens else (eval_data(data_file, config), data_file)
    tokenizer = inference.load_tokenizer(run)
    chat = ChatTokenizer(source=BaseModelSource(path=str(run.adapter_dir), display_name=run.base_name),
                         tokenizer=tokenizer, pad_note=f"pad token: {tokenizer.pad_token!r}",
                         template_origin="saved with the adapter",
                         renderer=ChatRenderer(tokenizer, tokenizer.chat_template))
    with console.silenced():
        prepared = prepare(LoadedConfig(config, None, []), config, data=loaded_data, chat=chat, checks=False,
                           stream=own_tokens)  # a streamed run's eval set alone, not its whole training data
    if own_tokens:
        if prepared.data.eval is None or not len(prepared.data.eval):
            raise UserError("the run has no eval data", fix="pass --data FILE with held-out samples")
        source = prepared.data.eval_source
    return prepared, source


def general_data_file() -> Path:
    """The general-instruction file shipped with lora-ft (257 varied pairs, no legal or finance content)."""
    return Path(str(resources.files("lora_ft.data_templates").joinpath("general", "general_instructions.jsonl")))


@dataclass
class EvalOptions:
    data_file: str | None = None  # instead of the run's eval data
    general_file: str | None = None  # None: the shipped file; "" : no forgetting check
    samples_to_show: int = 3
    max_new_tokens: int = 256
    max_answers: int | None = 100  # prompts answered per set (the loss covers all samples)
    max_tool_turns: int = 200  # assistant turns of conversations with tools answered (0: none)
    batch_size: int = 64  # rows decoded at once: per-row cost is flat from 24 to 140 rows on a CPU
    tasks: list[str] | None = None  # lm-evaluation-harness tasks
    include_path: str | None = None
    task_limit: int | None = None
    out_dir: Path | None = None
    base: str | None = None  # the base model's directory, when it moved


@dataclass
class _EvalSet:
    name: str
    source: str
    prepared: object
    input_ids: list
    labels: list
    conversations: list  # (sample, prompt messages, reference text) for the prompts to answer
    prompts: int
    tool_turns: list  # the assistant turns of conversations with tools to answer (tool_calls.ToolTurn)
    tool_turns_total: int
    tool_conversations: int


def _eval_set(name: str, run: FinishedRun, data_file: str | None, max_answers: int | None,
              max_tool_turns: int = 0) -> _EvalSet:
    from lora_ft.evaluation.tool_calls import tool_turns

    prepared, source = prepared_eval(run, data_file, sft=name == "general")
    tokens = prepared.eval_tokens
    input_ids, labels = tokens.side("chosen") if prepared.is_preference else tokens.kept_tokens()
    if not input_ids:
        raise UserError(f"no {name} eval sample has an answer to score", where=source, fix="check the eval data")
    conversations, with_tools = [], []
    for sample in prepared.data.eval:
        if not sample.messages:
            continue
        if sample.tools and not sample.is_preference:
            with_tools.append(sample)
        if sample.is_preference:
            if sample.chosen:
                conversations.append((sample, sample.messages, sample.chosen[-1]["content"]))
        elif sample.messages[-1]["role"] == "assistant":
            conversations.append((sample, sample.messages[:-1], sample.messages[-1]["content"]))
    prompts = len(conversations)
    if data_file is not None and Path(data_file) == general_data_file():
        source = f"general instructions shipped with lora-ft ({general_data_file().name})"
    turns, total = tool_turns(with_tools, max_tool_turns, run.config.data.reasoning)
    return _EvalSet(name, source, prepared, input_ids, labels, conversations[:max_answers], prompts, turns, total,
                    len(with_tools))


@dataclass
class _Prompts:
    """Prompts both models answer: ``what`` they are, in words ("domain prompts"), the conversations, their
    names (file:line) and the tools each may call."""
    what: str
    conversations: list
    names: list[str]
    tools: list


def _answers(model, run: FinishedRun, tokenizer, prompts: _Prompts, label: str, options: EvalOptions,
             merge: bool, warn: bool) -> tuple[list, float]:
    """Both models answer the same prompts: ``warn`` (the first of the two) says which prompts do not fit."""
    from lora_ft import inference

    total = len(prompts.conversations)
    console.status(f"answering {total} {prompts.what} with the {label} model ...")
    started = time.time()
    with inference.merged_adapter(model, merge):
        answers = inference.generate_batch(
            model, tokenizer, run, prompts.conversations, options.max_new_tokens, options.batch_size,
            progress=lambda done: console.status(f"answering {prompts.what} with the {label} model: {done}/{total}"),
            names=prompts.names, warn=console.warn if warn else None, tools=prompts.tools)
    return answers, time.time() - started


def _both_answers(model, run: FinishedRun, tokenizer, prompts: _Prompts, options: EvalOptions, before: str):
    """The starting model's answers, then the tuned model's: (answers, seconds) for each."""
    from lora_ft.evaluation import preferences

    with preferences.starting_model(model, run):  # the start adapter merges; the base has none to merge
        base = _answers(model, run, tokenizer, prompts, before, options,
                        merge=run.config.model.adapter is not None, warn=True)
    return base, _answers(model, run, tokenizer, prompts, "tuned", options, merge=True, warn=False)


def _score_set(model, run: FinishedRun, tokenizer, evalset: _EvalSet, options: EvalOptions, before: str):
    """Losses and answers of the starting model and the tuned one on one set; and the per-sample records."""
    from lora_ft.evaluation import preferences
    from lora_ft.answer_metrics import answer_scores, summarize
    from lora_ft.evaluation.report import SetResult
    from lora_ft.evaluation.stats import paired_mean, paired_ratio
    from lora_ft.inference import merged_adapter

    with preferences.starting_model(model, run), merged_adapter(model, run.config.model.adapter is not None):
        base_losses = sample_losses(model, evalset.input_ids, evalset.labels)
    with merged_adapter(model):
        tuned_losses = sample_losses(model, evalset.input_ids, evalset.labels)
    counts = trained_token_counts(evalset.labels)
    scored = sum(counts)
    base_loss, tuned_loss = sum(base_losses) / max(scored, 1), sum(tuned_losses) / max(scored, 1)
    result = SetResult(name=evalset.name, source=evalset.source, samples=len(evalset.input_ids),
                       scored_tokens=scored, base_loss=base_loss, tuned_loss=tuned_loss, prompts=evalset.prompts,
                       differences={"loss": paired_ratio(base_losses, tuned_losses, counts)})
    console.say(f"{evalset.name} loss: {before} {base_loss:.4f}, tuned {tuned_loss:.4f} "
                f"({len(evalset.input_ids)} samples, {scored:,} answer tokens)")
    if not evalset.conversations:
        return result, []
    references = [c[2] for c in evalset.conversations]
    prompts = _Prompts(f"{evalset.name} prompts", [c[1] for c in evalset.conversations],
                       [c[0].location for c in evalset.conversations], [c[0].tools for c in evalset.conversations])
    (base_answers, base_seconds), (tuned_answers, tuned_seconds) = _both_answers(model, run, tokenizer, prompts,
                                                                                 options, before)
    records = []
    for (sample, prompt, reference), old, new in zip(evalset.conversations, base_answers, tuned_answers):
        records.append({"set": evalset.name, "location": sample.location, "prompt": prompt[-1]["content"],
                        "reference": reference, "base": old.text, "tuned": new.text,
                        "base_scores": answer_scores(old.text, reference, old.stopped, old.tokens),
                        "tuned_scores": answer_scores(new.text, reference, new.stopped, new.tokens)})
    result.base = summarize([a.text for a in base_answers], references, [r["base_scores"] for r in records],
                            base_seconds)
    result.tuned = summarize([a.text for a in tuned_answers], references, [r["tuned_scores"] for r in records],
                             tuned_seconds)
    for key in ("rouge_l", "token_f1"):
        result.differences[key] = paired_mean([r["base_scores"][key] for r in records],
                                              [r["tuned_scores"][key] for r in records])
    return result, records


def _score_tool_turns(model, run: FinishedRun, tokenizer, evalset: _EvalSet, options: EvalOptions, before: str):
    """Both models answer each held-out assistant turn of the conversations with tools; their calls scored."""
    from lora_ft.evaluation.tool_calls import ToolCallResult, rates, turn_record

    turns = evalset.tool_turns
    prompts = _Prompts("assistant turns of conversations with tools", [t.prompt for t in turns],
                       [t.location for t in turns], [t.tools for t in turns])
    (base_answers, _), (tuned_answers, _) = _both_answers(model, run, tokenizer, prompts, options, before)
    records = [turn_record(turn, old.text, new.text) for turn, old, new in zip(turns, base_answers, tuned_answers)]
    result = ToolCallResult(source=evalset.source, conversations=evalset.tool_conversations,
                            turns=evalset.tool_turns_total, answered=len(turns),
                            base=rates([r["base_scores"] for r in records]),
                            tuned=rates([r["tuned_scores"] for r in records]))
    console.say(f"{result.verdict()}, {result.answered} assistant turns answered")
    return result, records


def evaluate_run(run: FinishedRun, options: EvalOptions | None = None, **overrides):
    """Evaluate a finished run and write its report (``report.md``, ``report.json``, ``samples.jsonl``)."""
    from lora_ft import inference
    from lora_ft.evaluation import harness, preferences, tracking
    from lora_ft.evaluation.report import EvalReport

    options = options or EvalOptions()
    for key, value in overrides.items():
        setattr(options, key, value)
    out_dir = Path(options.out_dir) if options.out_dir else run.run_dir / "eval"
    check_report_free(out_dir)  # before the slow part
    started = time.time()
    manager = None
    if options.tasks:  # a missing extra or an unknown task is found before anything slow
        manager = harness.task_manager(options.include_path)
        harness.check_tasks(manager, options.tasks, options.include_path)
    rewards_run = method_of(run.config.method).evaluates_rewards  # RL: held-out prompts scored by its rewards
    with fixes_for_eval(run, "--data", options.data_file):
        sets = [] if rewards_run else [_eval_set("domain", run, options.data_file, options.max_answers,
                                                 options.max_tool_turns)]
        held_out = prepared_eval(run, options.data_file) if rewards_run else None  # (prepared, source)
    general = general_data_file() if options.general_file is None else options.general_file
    if general:
        with fixes_for_eval(run, "--general", str(general)):
            sets.append(_eval_set("general", run, str(general), options.max_answers))
    model = inference.load_tuned(run, options.base)
    if model.config._attn_implementation == "sdpa":  # the losses read unpadded rows: attention within each sample
        from lora_ft.model.attention import use_per_sample_attention

        use_per_sample_attention(model, True)
    tokenizer = (sets[0].prepared if sets else held_out[0]).chat.tokenizer
    before = "base" if run.config.model.adapter is None else "start"
    results, records = [], []
    reward_result = None
    if held_out is not None:
        from lora_ft.evaluation.rewards import score_rewards

        reward_result, records = score_rewards(model, run, *held_out, before)
    for evalset in sets:
        result, rows = _score_set(model, run, tokenizer, evalset, options, before)
        results.append(result)
        records += rows
    if rewards_run:
        results.insert(0, None)  # no domain loss: the rewards say how the tuned model does on held-out prompts
    tool_result, tool_records = None, []
    if sets and sets[0].tool_turns and not rewards_run:
        tool_result, tool_records = _score_tool_turns(model, run, tokenizer, sets[0], options, before)
    preference = None
    domain = sets[0] if not rewards_run else None
    if domain is not None and domain.prepared.is_preference:
        with preferences.starting_model(model, run):
            start_scores = preferences.pair_scores(model, domain.prepared.eval_tokens)
        if start_scores.chosen:
            beta = getattr(run.config.method_settings, "beta", 0.1)
            preference = preferences.reward_summary(
                start_scores, preferences.pair_scores(model, domain.prepared.eval_tokens), beta)
    del model
    harness_scores, harness_seconds = None, 0.0
    if manager is not None:
        console.status(f"lm-evaluation-harness: {', '.join(options.tasks)}, {before} and tuned ...")
        harness_scores, harness_seconds = harness.compare(run, manager, options.tasks, limit=options.task_limit,
                                                          base=options.base)
    examples = [{k: r[k] for k in ("set", "location", "prompt", "reference", "base", "tuned")}
                for r in records if r["set"] == "domain"][: options.samples_to_show]
    report = EvalReport(run_dir=str(run.run_dir), domain=results[0], general=results[1] if len(results) > 1 else None,
                        before=before, max_new_tokens=options.max_new_tokens, preference=preference,
                        harness=harness_scores, harness_seconds=harness_seconds, examples=examples,
                        tool_calls=tool_result, rewards=reward_result, seconds=time.time() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_report_free(out_dir)  # still free: nothing is written over
    write_text_atomic(out_dir / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                         for r in records + tool_records))
    write_text_atomic(out_dir / "report.json", json.dumps(report.as_dict(), indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", report.markdown())
    console.say("")
    console.say(report.table())
    for item in examples:
        console.say(f"\nprompt:    {item['prompt'][:200]}")
        if item["reference"] is not None:
            console.say(f"reference: {item['reference'][:300]}")
        console.say(f"{before + ':':<10} {item['base'][:300]}")
        console.say(f"tuned:     {item['tuned'][:300]}")
    for line in tracking.log_report(run, report, records):
        console.note(line)
    console.say(f"\nverdict: {report.verdict()}")
    console.say(f"report: {out_dir / 'report.md'} (and report.json, samples.jsonl); {report.seconds:.0f} s")
    return report
