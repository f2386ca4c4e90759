"""The page's layout: five tabs (Runs, Run, Compare, Chat, New run) over :class:`lora_ft.ui.pages.Pages`, live
parts refreshed by a timer. Gradio draws it; nothing here reads a run directory itself."""

from __future__ import annotations

import time

import gradio as gr

from lora_ft.ui import chat_pair, curves, run_form, runs_index
from lora_ft.tool_call_text import assistant_turn
from lora_ft.ui.pages import ANSWER_HEADERS, RUN_PAGE_PARTS, Pages, failure_text

REFRESH_SECONDS = 2.0
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # one colour per compared run
CSS = ".mono textarea { font-family: ui-monospace, monospace; font-size: 13px; }"


def _plot(title: str, elem_id: str, color: bool = False):
    return gr.LinePlot(x=curves.STEP, y=curves.VALUE, color=curves.RUN if color else None, title=title,
                       x_title="step", y_title=title, elem_id=elem_id, height=260)


def _field(field: run_form.FormField):
    """A form component for one schema field: its kind, default, choices and description from the schema."""
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=field.default, label=field.label, info=field.info)
    if field.kind == "flag":
        return gr.Checkbox(value=bool(field.default), label=field.label, info=field.info)
    if field.kind in ("int", "float"):
        return gr.Number(value=field.default, label=field.label, info=field.info, precision=0 if field.kind == "int"
                         else None)
    return gr.Textbox(value=field.default or "", label=field.label, info=field.info)


def build(pages: Pages) -> gr.Blocks:
    runs = pages.runs()  # the runs folder read once for the first choices (the timer keeps them current)
    names, finished = [s.name for s in runs], [s.name for s in runs if s.status == runs_index.FINISHED]
    with gr.Blocks(title="lora-ft", analytics_enabled=False) as page:
        gr.Markdown(f"# lora-ft\nRuns in `{pages.runs_dir}`")
        timer = gr.Timer(REFRESH_SECONDS)
        with gr.Tabs() as tabs:
            with gr.Tab("Runs", id="runs"):
                runs_table = gr.Dataframe(headers=runs_index.TABLE_HEADERS, interactive=False, wrap=True,
                                          elem_id="runs-table")
                gr.Markdown("Click a run to open its page. Running runs update by themselves.")
            with gr.Tab("Run", id="run"):
                run_choice = gr.Dropdown(names, label="run", elem_id="run-choice", allow_custom_value=True)
                run_status = gr.Markdown(elem_id="run-status")
                with gr.Row():
                    stop_button = gr.Button("Stop (checkpoint, then stop)", variant="stop", elem_id="stop")
                    resume_button = gr.Button("Resume", elem_id="resume")
                action_text = gr.Textbox(label="what happened", lines=1, max_lines=12, interactive=False,
                                         elem_id="run-action", elem_classes="mono")
                run_log = gr.Textbox(label="training log (runs started here)", lines=2, max_lines=16,
                                     interactive=False, autoscroll=True, elem_id="run-log", elem_classes="mono")
                with gr.Row():
                    run_plots = [_plot(title, f"plot-{key}") for key, title in curves.CURVES]
                with gr.Accordion("Eval report (lora-ft eval)", open=True):
                    eval_report = gr.Markdown(elem_id="eval-report")
                    answers = gr.Dataframe(headers=ANSWER_HEADERS, interactive=False, wrap=True,
                                           elem_id="eval-answers", max_height=600,
                                           column_widths=["7%", "17%", "19%", "21%", "7%", "22%", "7%"])
                with gr.Accordion("Config (resolved)", open=False):
                    config_text = gr.Code(language="yaml", elem_id="run-config")
                with gr.Accordion("Data report (lora-ft data)", open=False):
                    data_button = gr.Button("Read the data and report", elem_id="data-report-button")
                    data_text = gr.Textbox(show_label=False, lines=2, max_lines=60, interactive=False,
                                           elem_id="data-report", elem_classes="mono")
                with gr.Accordion("Model card", open=False):
                    card = gr.Markdown(elem_id="model-card")
                with gr.Accordion("Downloads", open=True):
                    downloads = gr.Markdown(elem_id="downloads")
            with gr.Tab("Compare", id="compare"):
                compare_choice = gr.Dropdown(names, multiselect=True, label="runs to compare",
                                             elem_id="compare-choice")
                compare_button = gr.Button("Compare", elem_id="compare-button")
                compare_error = gr.Markdown()
                with gr.Row():
                    compare_plots = [_plot(title, f"compare-{key}", color=True) for key, title in curves.CURVES]
                compare_table = gr.Dataframe(headers=curves.COMPARE_HEADERS, interactive=False,
                                             elem_id="compare-table")
            with gr.Tab("Chat", id="chat"):
                chat_run = gr.Dropdown(finished, label="finished run", elem_id="chat-run")
                with gr.Row():
                    base_chat = gr.Chatbot(label="base model", elem_id="chat-base", height=360)
                    tuned_chat = gr.Chatbot(label="tuned model (base + adapter)", elem_id="chat-tuned", height=360)
                message = gr.Textbox(label="message", placeholder="ask both models the same thing", elem_id="message")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear")
                    max_new = gr.Slider(16, 1024, value=256, step=16, label="longest answer (tokens)", elem_id="max-new")
                    temperature = gr.Slider(0, 1.5, value=0.0, step=0.05, label="temperature (0: greedy)")
                chat_note = gr.Markdown(elem_id="chat-note")
            with gr.Tab("New run", id="new"):
                gr.Markdown("A config built from the settings below (the rest keep their defaults, docs/config.md). "
                            "Check runs `lora-ft validate`'s checks; Plan runs `lora-ft plan`; Start runs "
                            "`lora-ft train` on the written config.")
                name = gr.Textbox(label="run name (its folder in the runs folder)", elem_id="new-name")
                fields = run_form.form_fields()
                with gr.Row(equal_height=False):
                    inputs = [_field(f) for f in fields]
                more = gr.Textbox(label="more settings, one KEY=VALUE per line (as --set takes them)", lines=3,
                                  elem_id="new-more")
                with gr.Row():
                    check_button = gr.Button("Check", elem_id="check")
                    plan_button = gr.Button("Plan", elem_id="plan")
                    start_button = gr.Button("Start", variant="primary", elem_id="start")
                new_output = gr.Textbox(label="result", lines=2, max_lines=40, interactive=False, elem_id="new-output",
                                        elem_classes="mono")

        run_parts = [run_status, run_log, *run_plots, eval_report, answers, config_text, card, downloads]

        def parts(shown: dict) -> list:
            """A run page's components' new values: the parts ``shown`` holds, the others unchanged."""
            return [shown.get(key, gr.update()) for key in RUN_PAGE_PARTS]

        def on_refresh(chosen):
            summaries = pages.runs()  # the folder read once per refresh
            listed = [s.name for s in summaries]
            updates = [[s.row() for s in summaries], gr.update(choices=listed), gr.update(choices=listed),
                       gr.update(choices=[s.name for s in summaries if s.status == runs_index.FINISHED])]
            try:
                shown = pages.live(chosen) if chosen else {}
            except Exception:  # the run folder was removed meanwhile
                shown = {}
            return updates + parts(shown)

        page.load(pages.runs_table, None, runs_table, show_progress="hidden")  # filled when the page opens
        timer.tick(on_refresh, run_choice, [runs_table, run_choice, compare_choice, chat_run, *run_parts],
                   show_progress="hidden")

        def open_run(chosen):
            if not chosen:
                return parts({}) + [gr.update()]
            try:
                return parts(pages.run_page(chosen)) + [""]
            except Exception as exc:
                return parts({"status": failure_text(exc)}) + [gr.update()]

        run_outputs = [*run_parts, action_text]
        run_choice.change(open_run, run_choice, run_outputs)

        def table_click(evt: gr.SelectData):
            row = evt.row_value or []
            return (gr.update(value=row[0]), gr.Tabs(selected="run")) if row else (gr.update(), gr.update())

        runs_table.select(table_click, None, [run_choice, tabs])

        def guarded(work):
            def call(*args):
                try:
                    return work(*args)
                except Exception as exc:
                    return failure_text(exc)
            return call

        stop_button.click(guarded(pages.stop), run_choice, action_text)
        resume_button.click(guarded(pages.resume), run_choice, action_text)
        data_button.click(guarded(pages.data_report), run_choice, data_text)

        def on_compare(chosen):
            try:
                frames, rows = pages.compare(chosen)
            except Exception as exc:
                return [failure_text(exc)] + [gr.update()] * 4
            # each run's colour named with the data: the plot otherwise keeps the series of its first drawing
            colors = {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(chosen)}
            return ["", *[gr.update(value=frames[key], color_map=colors) for key, _ in curves.CURVES], rows]

        # on the button, not on each choice: a plot updated twice in quick succession keeps its first series
        compare_button.click(on_compare, compare_choice, [compare_error, *compare_plots, compare_table])

        def on_send(chosen, text, base_shown, tuned_shown, base_turns, tuned_turns, tokens, heat,
                    progress=gr.Progress()):
            """Both models answer ``text``; the chats show the answers (calls read out), the states keep each
            model's conversation as its template reads it (calls as tool_calls)."""
            unchanged = (base_shown, tuned_shown, base_turns, tuned_turns)
            if not chosen or not (text or "").strip():
                yield *unchanged, "Choose a finished run and write a message.", text
                return
            try:
                progress(0, desc="loading the model")
                loaded = pages_chat.load(pages.summary(chosen).path)
                asked = {"role": "user", "content": text.strip()}
                tools = (f" Tools offered: {', '.join(t['function']['name'] for t in loaded.tools)}."
                         if loaded.tools else "")
                started, base, tuned, note = time.perf_counter(), "", "", ""
                for base, tuned, note in chat_pair.answer_pair(loaded, base_turns or [], tuned_turns or [],
                                                               text.strip(), int(tokens), float(heat)):
                    yield ([*base_shown, asked, {"role": "assistant", "content": chat_pair.shown(base, loaded.tools)}],
                           [*tuned_shown, asked, {"role": "assistant", "content": chat_pair.shown(tuned, loaded.tools)}],
                           base_turns, tuned_turns, note + tools, "")
                base_turns = [*(base_turns or []), asked, assistant_turn(base, loaded.tools)[0]]
                tuned_turns = [*(tuned_turns or []), asked, assistant_turn(tuned, loaded.tools)[0]]
                yield (gr.update(), gr.update(), base_turns, tuned_turns,
                       f"answered in {time.perf_counter() - started:.1f} s. {note}{tools}".strip(), "")
            except Exception as exc:
                yield *unchanged, f"```\n{failure_text(exc)}\n```", text

        pages_chat = chat_pair.ChatModels()
        base_turns, tuned_turns = gr.State([]), gr.State([])
        chat_inputs = [chat_run, message, base_chat, tuned_chat, base_turns, tuned_turns, max_new, temperature]
        chat_outputs = [base_chat, tuned_chat, base_turns, tuned_turns, chat_note, message]
        send.click(on_send, chat_inputs, chat_outputs)
        message.submit(on_send, chat_inputs, chat_outputs)
        cleared = [base_chat, tuned_chat, base_turns, tuned_turns, chat_note]
        clear.click(lambda: ([], [], [], [], ""), None, cleared)
        chat_run.change(lambda: ([], [], [], [], ""), None, cleared)

        def form_action(action):
            def call(run_name, more_text, *values):
                run_name, config = pages.form_config(run_name, dict(zip(run_form.FORM_KEYS, values)), more_text)
                if action == "check":
                    return run_form.validate(config)[1]
                if action == "plan":
                    ok, text = run_form.validate(config)
                    return run_form.plan(config)[1] if ok else text
                return pages.start(run_name, config)
            return guarded(call)

        form_inputs = [name, more, *inputs]
        check_button.click(form_action("check"), form_inputs, new_output)
        plan_button.click(form_action("plan"), form_inputs, new_output)
        start_button.click(form_action("start"), form_inputs, new_output).then(
            lambda run_name: (gr.update(value=run_name.strip()), gr.Tabs(selected="run"))
            if pages.jobs.get(run_name.strip()) is not None else (gr.update(), gr.update()), name, [run_choice, tabs])
    return page

