"""``lora-ft chat RUN``: talk to the tuned model in the terminal; with ``--tools``, see the calls it makes and give
their results back (``/tool RESULT``)."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK


def _assistant_turn(answer: str, tools: list[dict] | None) -> dict:
    """The model's answer as a turn of the history (its calls shown, each as ``call: name({...})``)."""
    from lora_ft.tool_call_text import assistant_turn

    turn, parsed = assistant_turn(answer, tools)
    for call in parsed.calls if parsed else []:
        console.say(f"call: {call.shown()}")
    return turn


def _pending_call(history: list[dict]) -> dict | None:
    """The first call of the last assistant turn that no result answers yet."""
    answered = set()
    for turn in reversed(history):
        if turn["role"] == "tool":
            answered.add(turn["tool_call_id"])
        elif turn["role"] == "assistant":
            return next((c for c in turn.get("tool_calls", []) if c["id"] not in answered), None)
        else:
            return None
    return None


def run(args) -> int:
    from lora_ft import inference
    from lora_ft.rundir.finished import open_run

    run = open_run(args.run_dir)
    tools = inference.tools_file(args.tools) if args.tools else None
    console.quiet_libraries()
    model = inference.load_tuned(run, args.base)
    tokenizer = inference.load_tokenizer(run)
    system = run.config.data.system_prompt
    history: list[dict] = []
    console.say(f"chatting with {run.run_dir} ({run.base_name} + adapter). /reset clears, /system TEXT sets the system "
         "message, " + (f"/tool RESULT answers the model's call ({len(tools)} tools), " if tools else "")
         + "/exit (or Ctrl-D) quits.")
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            console.say()
            return EXIT_OK
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return EXIT_OK
        if line == "/reset":
            history = []
            console.say("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            console.say(f"(system message {'set' if system else 'cleared'}; conversation cleared)")
            continue
        if line.startswith("/tool"):
            call = _pending_call(history)
            if call is None:
                console.say("(no call waits for a result: /tool RESULT answers the model's last call)")
                continue
            history.append({"role": "tool", "content": line[len("/tool"):].strip(),
                            "name": call["function"]["name"], "tool_call_id": call["id"]})
            if _pending_call(history) is not None:  # parallel calls: one result each before the model goes on
                console.say(f"(result of {call['function']['name']} kept; /tool RESULT answers the next call)")
                continue
        else:
            history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        pieces = inference.stream(model, tokenizer, run, messages, args.max_new_tokens, args.temperature,
                                  name="the conversation", warn=inference.warn_on_stderr, tools=tools)
        answer = next(pieces, "")  # a conversation cut to fit the context is said before the answer starts
        print("model> " + answer, end="", flush=True)
        for piece in pieces:
            answer += piece
            print(piece, end="", flush=True)
        print(flush=True)
        history.append(_assistant_turn(answer, tools))
