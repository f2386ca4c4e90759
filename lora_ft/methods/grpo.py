"""``method: grpo``: Group Relative Policy Optimization (TRL's GRPOTrainer), reinforcement learning from rewards a
program computes. For each prompt the adapter being trained samples ``num_generations`` answers, the rewards of
``grpo.rewards`` score them, and the policy moves toward the answers that scored above their group's mean.

Prompts are rendered with the run's chat template here (as every other method's data is), so TRL tokenizes text
and never a template of its own; the held-out prompts are answered greedily and scored before and after training.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field

from lora_ft.errors import UserError
from lora_ft.methods import TrainingMethod
from lora_ft.rewards import RewardSpec, file_problems
from lora_ft.sections import Section

GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo")
COMPLETIONS_FILE = "completions.jsonl"
# GRPO with LoRA (TRL's and unsloth's recipes) trains at about 1e-5 to 5e-6; used when train.learning_rate is unset
GRPO_LEARNING_RATE = 1e-5


class GrpoSection(Section):
    """Group Relative Policy Optimization (`method: grpo`): answers sampled per prompt, scored by rewards."""

    rewards: list[RewardSpec] = Field(min_length=1, description="The rewards that score each sampled answer, "
                                      "weighted and summed (see `grpo.rewards[]` below).")
    num_generations: int = Field(8, ge=2, description="Answers sampled per prompt (the group whose mean reward is "
                                 "the baseline). More gives a steadier signal at more sampling cost; 8 is usual, "
                                 "4 on a CPU. train.batch_size x gradient_accumulation_steps x processes counts "
                                 "answers and must be a multiple of it.")
    max_completion_length: int = Field(256, ge=1, description="The most tokens an answer may have; longer ones "
                                       "are cut (see `mask_truncated_completions`). data.max_seq_length holds "
                                       "prompt and answer together.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature: 1.0 samples the model's own "
                               "distribution (the group needs different answers to compare); lower it to 0.7 if "
                               "answers turn to noise.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this "
                         "probability mass (1.0: all).")
    beta: float = Field(0.0, ge=0, description="Weight of the KL penalty that holds the policy near the starting "
                        "model. 0 (TRL's default, as in DAPO and Dr. GRPO) skips the reference pass entirely; "
                        "0.001 to 0.04 adds it (one more forward per step, the adapter switched off).")
    loss_type: Literal[GRPO_LOSSES] = Field(  # type: ignore[valid-type]
        "dapo", description="How token losses are averaged: `dapo` (over the active tokens of the whole "
        "accumulated batch: no length bias; TRL's default), `grpo` (per answer, then over answers: favours short "
        "right answers and long wrong ones), `dr_grpo` (by a constant: max_completion_length), `bnpo` (over the "
        "micro-batch's tokens), `cispo` (clipped importance weights, MiniMax-M1), `sapo` (a soft gate in place of "
        "clipping).")
    epsilon: float = Field(0.2, gt=0, description="The clipping range of the policy ratio (PPO's epsilon).")
    epsilon_high: float | None = Field(None, gt=0, description="A separate upper clipping bound (DAPO's "
                                       "clip-higher uses 0.28); null: the same as `epsilon`.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="How rewards become advantages: minus the group's mean, divided by the group's "
        "standard deviation (`group`, GRPO), the batch's (`batch`), or not divided (`none`, Dr. GRPO: no bias "
        "toward questions whose answers all score alike).")
    mask_truncated_completions: bool = Field(False, description="Leave answers cut at max_completion_length out of "
                                             "the loss (DAPO): they are not penalized for what they never got to "
                                             "say. Turn on once most answers finish within the limit.")
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each batch of sampled answers (GRPO's "
                                "mu); above 1 reuses samples, with the clipping doing its work.")
    generation: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="What samples the answers: `transformers` (batched, with a KV cache), `vllm` (vLLM "
        "in the training process, sharing the GPU; needs vllm installed and a CUDA GPU); `auto`: vLLM where both "
        "are present, else transformers.")
    vllm_memory: float = Field(0.3, gt=0, lt=1, description="With vLLM: the share of GPU memory it may take for "
                               "the weights it holds and its KV cache.")
    log_completions_every: int = Field(5, ge=0, description="Every this many steps, write the step's sampled "
                                       f"answers with each reward to {COMPLETIONS_FILE} in the run directory (to "
                                       "see reward hacking as it starts); 0: never.")


def uses_vllm(cfg) -> bool:
    settings = cfg.grpo
    if settings.generation == "transformers" or cfg.train.device != "cuda":
        return False
    return settings.generation == "vllm" or importlib.util.find_spec("vllm") is not None


def build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common: dict, callbacks):
    from trl import GRPOConfig, GRPOTrainer

    from lora_ft import distributed
    from lora_ft.rewards.functions import reward_functions
    from lora_ft.rewards.held_out import held_out_scores
    from lora_ft.rewards.sample_log import SampleLog

    settings = cfg.grpo
    check_groups(cfg, distributed.current_world().size)
    functions, weights = reward_functions(settings.rewards, str)
    # the run's stop ids (load_for_training): TRL ends and masks answers at every EOS id the model declares
    declared = model.generation_config.eos_token_id
    stop_ids = [declared] if isinstance(declared, int) else list(declared or [tokenizer.eos_token_id])
    vllm = uses_vllm(cfg)
    # evaluations (train.eval_steps) score the held-out prompts by their rewards: the best adapter is the one
    # that earns most (train.early_stopping_patience)
    best = {"metric_for_best_model": "reward", "greater_is_better": True} if common.get("load_best_model_at_end") \
        else {"metric_for_best_model": None, "greater_is_better": None}
    args = GRPOConfig(
        **{**common, **best},
        num_generations=settings.num_generations, max_completion_length=settings.max_completion_length,
        temperature=settings.temperature, top_p=settings.top_p, beta=settings.beta, loss_type=settings.loss_type,
        epsilon=settings.epsilon, epsilon_high=settings.epsilon_high, scale_rewards=settings.scale_rewards,
        mask_truncated_completions=settings.mask_truncated_completions, num_iterations=settings.num_iterations,
        reward_weights=weights, use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=settings.vllm_memory,
        log_completions=False, remove_unused_columns=False)
    log = SampleLog(Path(cfg.output_dir) / COMPLETIONS_FILE, settings.log_completions_every,
                    [spec.label for spec in settings.rewards])
    batch = max(1, cfg.train.batch_size)

    class RenderedPromptsGRPOTrainer(GRPOTrainer):
        def _tokenize_prompts(self, prompts):
            # the prompts arrive rendered by the run's template (special tokens included)
            return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.accelerator.is_main_process:
                first = self.accelerator.process_index * len(prompts)
                log.write(self.state.global_step + 1, "train", prompts, completions,
                          rewards[first:first + len(prompts)].tolist(), weights)
            return rewards

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            scores = held_out_scores(self.model, self.processing_class, dataset, settings.rewards, functions,
                                     settings.max_completion_length, stop_ids, batch)
            metrics = scores.metrics(metric_key_prefix)
            if self.accelerator.is_main_process:
                log.write_held_out(self.state.global_step, scores)
            super(GRPOTrainer, self).log(dict(metrics))  # the Trainer's log: GRPO's would add its pending figures
            return metrics

    return RenderedPromptsGRPOTrainer(model=model, reward_funcs=functions, args=args, train_dataset=train_dataset,
                                      eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks)


def check_groups(cfg, processes: int) -> None:
    """Each step's answers must be whole groups: batch x accumulation x processes a multiple of the group size."""
    train, generations = cfg.train, cfg.grpo.num_generations
    answers = train.batch_size * train.gradient_accumulation_steps * processes
    if answers % generations:
        raise UserError(
            f"train.batch_size x gradient_accumulation_steps x processes = {answers} answers per step, not a "
            f"multiple of grpo.num_generations = {generations} (each prompt's answers are scored as one group)",
            where="grpo.num_generations", settings=("train.batch_size",),
            fix=f"set train.batch_size or gradient_accumulation_steps so that the product is a multiple of "
                f"{generations}, or change grpo.num_generations")


def problems(cfg, resolve_path=None) -> list:
    settings = cfg.grpo
    found = []
    labels = [spec.label for spec in settings.rewards]
    for index, spec in enumerate(settings.rewards):
        if labels.count(spec.label) > 1 and labels.index(spec.label) != index:
            found.append((("grpo", "rewards", index, "name"), f"two rewards are named '{spec.label}' (their "
                          "figures would be logged under one name)", "give one of them its own `name`"))
        if spec.type == "python" and resolve_path is not None:
            problem = file_problems(spec, resolve_path)
            if problem:
                found.append((("grpo", "rewards", index, "function"), problem,
                              "point `function` at path/to/file.py:function_name, the path relative to the config"))
    if cfg.data.max_seq_length <= settings.max_completion_length:
        found.append((("grpo", "max_completion_length"), f"grpo.max_completion_length "
                      f"({settings.max_completion_length}) leaves no room for the prompt in data.max_seq_length "
                      f"({cfg.data.max_seq_length})", "lower grpo.max_completion_length or raise "
                      "data.max_seq_length"))
    if settings.generation == "vllm" and cfg.train.device == "cpu":
        found.append((("grpo", "generation"), "vLLM sampling needs a CUDA GPU", "use generation: auto or "
                      "transformers on a CPU"))
    elif settings.generation == "vllm" and importlib.util.find_spec("vllm") is None:
        found.append((("grpo", "generation"), "generation: vllm, but vllm is not installed here",
                      "pip install vllm (a build that matches your torch and CUDA), or use generation: auto"))
    if cfg.train.lr_scheduler == "reduce_on_plateau":
        found.append((("train", "lr_scheduler"), "reduce_on_plateau lowers the rate when the eval loss stops "
                      "falling, and a GRPO run has no eval loss (its evaluations score rewards)",
                      "use cosine, linear or constant"))
    return found


def resolve_paths(cfg, absolute) -> None:
    for spec in cfg.grpo.rewards:
        if spec.type == "python":
            path, _, name = spec.function.rpartition(":")
            spec.function = f"{absolute(path)}:{name}"


def notes(cfg, learning_rate_given: bool) -> list[str]:
    settings = cfg.grpo
    found = [] if learning_rate_given else [
        f"grpo: learning rate {GRPO_LEARNING_RATE:g} (the usual rate for GRPO with LoRA; set train.learning_rate "
        "to change it)"]
    answers = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    found.append(f"grpo: {answers} sampled answers per step per process ({settings.num_generations} per prompt, "
                 f"up to {settings.max_completion_length} tokens); rewards: "
                 + "; ".join(spec.describe() for spec in settings.rewards))
    found.append("grpo: no KL penalty and no reference pass (grpo.beta: 0)" if settings.beta == 0 else
                 f"grpo: KL penalty {settings.beta:g} against the starting model (the adapter switched off)")
    return found


def reference_forwards(cfg) -> int:
    return 1 if cfg.grpo.beta else 0


def model_card_lines(cfg) -> list[str]:
    return [spec.describe() for spec in cfg.grpo.rewards]


METHOD = TrainingMethod(
    name="grpo", order=40,
    description="Group Relative Policy Optimization (GRPO): answers sampled per prompt and scored by rewards",
    reads=("prompts",), section=GrpoSection, prompts=True, evaluates_rewards=True,
    learning_rate=GRPO_LEARNING_RATE, padding_free=False, loss_name="grpo loss",
    build_trainer=build_trainer, problems=problems, notes=notes, resolve_paths=resolve_paths,
    reference_forwards=reference_forwards, has_reference=False, generation_forwards=lambda cfg: 1,
)

