"""``lora-ft ui``: a web page over a folder of runs (Gradio), reading the run directories the commands write and
running the commands themselves (``lora-ft train``, ``plan``) for what it starts. Only :mod:`.app` imports Gradio."""
