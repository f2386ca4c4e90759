"""Run inside the vLLM environment: load each model with vLLM's offline engine (the engine its server runs) and
answer every prompt greedily through the model's own chat template.
Usage: python vllm_answers.py REQUEST.json  -> JSON on stdout, last line.

A request: {"models": [{"name": N, "path": DIR}], "prompts": [TEXT], "max_tokens": N}. The result:
{"version": V, "models": {N: {"answers": [{"ids", "text", "finish_reason"}], "load_seconds": S}}}."""

import gc
import json
import sys
import time


def main() -> None:
    import vllm
    from vllm import LLM, SamplingParams

    request = json.loads(open(sys.argv[1]).read())
    greedy = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], seed=0)
    results = {}
    for spec in request["models"]:
        started = time.monotonic()
        llm = LLM(model=spec["path"], dtype="float32", max_model_len=1024, enforce_eager=True, seed=0)
        loaded = time.monotonic() - started
        outputs = llm.chat([[{"role": "user", "content": p}] for p in request["prompts"]], greedy, use_tqdm=False)
        results[spec["name"]] = {"load_seconds": round(loaded, 1), "answers": [
            {"ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text, "finish_reason": o.outputs[0].finish_reason}
            for o in outputs]}
        del llm
        gc.collect()
    sys.stdout.write(json.dumps({"version": vllm.__version__, "models": results}) + "\n")


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    main()
