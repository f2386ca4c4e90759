"""``lora-ft generate RUN``: answers to one prompt or a file of prompts, for scripts; with tools (``--tools``, or a
prompts row's own ``tools``), the calls each answer makes, parsed."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK, UserError

BATCH = 32  # greedy prompts answered at once

TEXT_PROMPTS = "a text file holds one prompt per line"
JSONL_PROMPTS = 'a .jsonl file holds one {"prompt": "..."} object per line'


def _read_prompts(path: str) -> list[tuple[str, list[dict] | None]]:
    """Each prompt of the file, with the tools its row lists (None: none of its own)."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompts file not found: {path}", fix="give a text file with one prompt per line")
    try:
        lines = [(number, line) for number, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(),
                                                              start=1) if line.strip()]
    except UnicodeDecodeError:
        from lora_ft.data.loading import first_non_utf8

        line, _ = first_non_utf8(file)
        raise UserError(f"the prompts file {path} is not UTF-8 text", where=f"{path}:{line}",
                        fix="save it as UTF-8") from None
    if not lines:
        content = "it is empty" if not file.stat().st_size else "it has blank lines only"
        shape = JSONL_PROMPTS if file.suffix == ".jsonl" else TEXT_PROMPTS
        raise UserError(f"the prompts file {path} holds no prompt ({content})",
                        fix=f"{shape}; or pass one prompt with --prompt TEXT")
    if file.suffix == ".jsonl":
        from lora_ft.samples import RowFault
        from lora_ft.tool_turns import read_tools

        prompts = []
        for number, line in lines:  # numbered as in the file, blank lines counted
            try:
                row = json.loads(line)
                prompt = str(row["prompt"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"line {number} is not a JSON object with a 'prompt' field", where=f"{path}:{number}",
                                fix='write {"prompt": "..."} on each line') from exc
            try:
                prompts.append((prompt, read_tools(row.get("tools"))))
            except RowFault as fault:
                raise UserError(f"line {number}: {fault}", where=f"{path}:{number}",
                                fix="give 'tools' as a list of tools in OpenAI's shape or of bare function schemas "
                                '({"name", "description", "parameters"}), or leave it out') from None
        return prompts
    return [(line, None) for _, line in lines]


def _result(prompt: str, text: str, stopped: bool, tools: list[dict] | None) -> str:
    """One answer as a line of JSON; with tools, the calls it makes (each valid one's name and arguments, or the
    text written and why it is no call)."""
    import json

    result = {"prompt": prompt, "answer": text, "stopped_at_end_of_turn": stopped}
    if tools:
        from lora_ft.tool_call_text import parse_tool_calls

        result["tool_calls"] = [call.as_dict() for call in parse_tool_calls(text).calls]
    return json.dumps(result)


def run(args) -> int:
    from lora_ft import inference
    from lora_ft.rundir.finished import open_run

    run = open_run(args.run_dir)
    tools = inference.tools_file(args.tools) if args.tools else None
    rows = [(args.prompt, None)] if args.prompt is not None else _read_prompts(args.prompts)
    prompts = [prompt for prompt, _ in rows]
    functions = [own or tools for _, own in rows]  # a row's own tools replace --tools
    console.quiet_libraries()
    model = inference.load_tuned(run, args.base)
    tokenizer = inference.load_tokenizer(run)
    system = run.config.data.system_prompt

    def messages(prompt: str) -> list[dict[str, str]]:
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    warn = inference.warn_on_stderr  # standard output holds the answers
    if args.prompts and args.temperature == 0:
        # greedy answers to a file: BATCH prompts at a time (the same answers as one by one, several times faster)
        with inference.merged_adapter(model):
            for start in range(0, len(prompts), BATCH):
                group, group_tools = prompts[start:start + BATCH], functions[start:start + BATCH]
                names = [f"prompt {number}" for number in range(start + 1, start + len(group) + 1)]
                answers = inference.generate_batch(model, tokenizer, run, [messages(p) for p in group],
                                                   args.max_new_tokens, BATCH, names=names, warn=warn,
                                                   tools=group_tools)
                for prompt, answer, own in zip(group, answers, group_tools):
                    console.say(_result(prompt, answer.text, answer.stopped, own))
        return EXIT_OK
    for number, (prompt, own) in enumerate(zip(prompts, functions), start=1):
        answer, stopped = inference.generate(model, tokenizer, run, messages(prompt), args.max_new_tokens,
                                             args.temperature, name=f"prompt {number}", warn=warn, tools=own)
        if args.prompts:
            console.say(_result(prompt, answer, stopped, own))
        else:
            console.say(answer)
            if own:
                from lora_ft.tool_call_text import parse_tool_calls

                for call in parse_tool_calls(answer).calls:
                    console.say(f"call: {call.shown()}")
    return EXIT_OK
