"""``lora-ft chat RUN``: talk to the tuned model in the terminal."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK


def run(args) -> int:
    from lora_ft import inference
    from lora_ft.rundir.finished import open_run

    run = open_run(args.run_dir)
    console.quiet_libraries()
    model = inference.load_tuned(run, args.base)
    tokenizer = inference.load_tokenizer(run)
    system = run.config.data.system_prompt
    history: list[dict[str, str]] = []
    console.say(f"chatting with {run.run_dir} ({run.base_name} + adapter). /reset clears, /system TEXT sets the system "
         "message, /exit (or Ctrl-D) quits.")
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
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        pieces = inference.stream(model, tokenizer, run, messages, args.max_new_tokens, args.temperature,
                                  name="the conversation", warn=inference.warn_on_stderr)
        answer = next(pieces, "")  # a conversation cut to fit the context is said before the answer starts
        print("model> " + answer, end="", flush=True)
        for piece in pieces:
            answer += piece
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": answer.strip()})
