"""``lora-ft eval``: a finished run's tuned model against the model it started from (:mod:`.run` knows the order of
the steps), on losses, generated answers, preference pairs and lm-evaluation-harness tasks, with intervals that tell
a difference from noise, the report and the run's trackers."""
