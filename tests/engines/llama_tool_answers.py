"""Run inside the llama.cpp environment: greedy answers from a GGUF file to conversations with tools, rendered by
the chat template stored in the file (llama-cpp-python passes `tools` to it).
Usage: python llama_tool_answers.py MODEL.gguf REQUEST.json  -> JSON on stdout, last line.
A request: {"tools": [...], "conversations": [[messages]], "max_tokens": N}."""

import json
import sys

import llama_cpp

path, request = sys.argv[1], json.loads(open(sys.argv[2]).read())
llm = llama_cpp.Llama(model_path=path, n_ctx=4096, seed=0, verbose=False)
answers = []
for messages in request["conversations"]:
    out = llm.create_chat_completion(messages=messages, tools=request["tools"], max_tokens=request["max_tokens"],
                                     temperature=0.0, top_k=1)
    choice = out["choices"][0]
    answers.append({"text": choice["message"]["content"] or "", "finish_reason": choice["finish_reason"]})
print(json.dumps({"version": llama_cpp.__version__, "answers": answers}))
