"""``lora-ft push RUN --repo NAME``: a finished run's export uploaded to the Hugging Face Hub with a model card."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK


def run(args) -> int:
    from lora_ft.exports import hub
    from lora_ft.rundir.finished import open_run

    repo = hub.check_repo_name(args.repo)  # before anything is read or sent
    run = open_run(args.run_dir)
    export = hub.find_export(run, args.artifact, args.export_dir)  # or the `lora-ft export` command to run first
    token = hub.find_token()
    endpoint = hub.endpoint_of(args.endpoint)
    pushed = hub.push(run, export, repo, token=token, endpoint=endpoint, private=not args.public,
                      revision=args.revision)
    console.say(hub.summary(pushed, export))
    return EXIT_OK
