"""``lora-ft plan CONFIG``: will the run fit, and how long will it take; ``--measure`` runs a few real steps."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK, EXIT_USAGE, UserError


def run(args) -> int:
    from lora_ft import planning
    from lora_ft.config import load_config, resolve
    from lora_ft.preparation import prepare

    loaded = load_config(args.config, args.overrides)
    if args.measure and args.gpu:
        raise UserError("--measure runs on this machine and cannot measure a named GPU", fix="drop --gpu")
    if args.measure and args.nproc > 1:
        raise UserError("--measure runs one process and cannot measure several", fix="drop --nproc (or --measure)")
    console.quiet_libraries()
    resolved = resolve(loaded, has_cuda=True if args.gpu else None)
    with console.held_back():  # the plan says it all; waits, damaged entries and progress still show
        prepared = prepare(loaded, resolved.config, cache=not args.no_cache)
    tokens, share = prepared.train_tokens, 1.0
    if prepared.method.prompts:  # every prompt answered num_generations times, each answer at its longest
        settings, prompts = resolved.config.method_settings, tokens
        generations, answer = settings.num_generations, settings.max_completion_length
        samples, longest = len(prompts) * generations, max(prompts.lengths, default=0) + answer
        tokens = planning.SampledTokens(generations * (prompts.tokens + len(prompts) * answer))
    elif prepared.is_preference:
        longest, samples = max((len(ids) for ids, _ in tokens.sequences()), default=0), len(tokens)  # pairs
        share = tokens.trained_tokens / tokens.tokens if tokens.tokens else 1.0
    else:
        trained_lengths = tokens.lengths(kept_only=True)[0]
        longest, samples = int(trained_lengths.max()) if len(trained_lengths) else 0, tokens.kept
    result = planning.make_plan(resolved.config, planning.read_shape(prepared.chat.source.path), tokens.tokens,
                                samples, resolved.device, args.gpu, longest, processes=args.nproc, answer_share=share)
    if args.measure:
        console.say("measuring a few real training steps ...")
        result.measured_peak, result.measured_step_seconds = planning.measure(prepared, resolved)
    console.say(result.render())
    return EXIT_OK if result.fits else EXIT_USAGE
