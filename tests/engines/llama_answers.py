"""Run inside the llama.cpp environment: greedy chat answers from a GGUF file, with the chat template stored in it.
Usage: python llama_answers.py MODEL.gguf PROMPTS.json MAX_TOKENS  -> JSON on stdout."""

import json
import sys

import llama_cpp

path, prompts, max_tokens = sys.argv[1], json.loads(open(sys.argv[2]).read()), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=2048, seed=0, verbose=False)
answers = []
for prompt in prompts:
    out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                     temperature=0.0, top_k=1)
    choice = out["choices"][0]
    answers.append({"text": choice["message"]["content"], "finish_reason": choice["finish_reason"]})
print(json.dumps({"version": llama_cpp.__version__, "answers": answers}))
