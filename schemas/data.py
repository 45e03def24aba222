"""`data:` training and validation prompts, prompt template, lengths and difficulty selection."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt

from schemas.common import Section

#: The two prompt templates of the SimpleRL-Zoo recipe. ``{input}`` is replaced by the question.
SIMPLE_TEMPLATE = "Question:\n{input}\nAnswer:\nLet's think step by step.\n"
COMPLEX_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{input}\n"
    "Please reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n<|im_start|>assistant\n"
)


def render_prompt(template: str, question: str) -> str:
    """Put ``question`` into ``template``: the one templating rule of compiler and runtime.

    ``{input}`` is replaced by the question; ``{{`` and ``}}`` are format-style escapes for literal
    braces (as in COMPLEX_TEMPLATE); any other single brace is kept as written, so a custom template
    may say ``\\boxed{}`` directly. The question itself is never interpreted.
    """
    parts = template.split("{input}")
    return question.join(p.replace("{{", "{").replace("}}", "}") for p in parts)


class SyntheticData(Section):
    """Built-in arithmetic problems (no download), used when `train` is 'synthetic'."""

    size: PositiveInt = Field(4096, description="Number of generated training problems (rows).")
    levels: list[int] = Field(default_factory=lambda: [1, 2, 3], description="Difficulty levels to generate (1 = easiest).")
    val_size: int = Field(256, ge=0, description="Generated validation problems (rows).")


class DataSpec(Section):
    """Where prompts come from and how they are shaped."""

    train: str = Field(description="Training file (verl-style .parquet or .jsonl) or 'synthetic'.")
    val: Optional[str] = Field(None, description="Validation file (.parquet/.jsonl), 'synthetic', or none.")
    split: Optional[Literal["easy", "medium", "hard"]] = Field(None, description="SimpleRL-Zoo difficulty split the data file holds (documentation + selection).")
    levels: Optional[list[int]] = Field(None, description="Keep only rows whose `level` is in this list.")
    min_pass_rate: Optional[float] = Field(None, ge=0, le=1, description="Drop prompts the policy already solves less often than this (fraction).")
    max_pass_rate: Optional[float] = Field(None, ge=0, le=1, description="Drop prompts the policy solves more often than this (fraction).")
    prompt_template: Literal["simple", "complex", "custom", "none"] = Field("simple", description="Template wrapped around each question.")
    custom_template: Optional[str] = Field(None, description="Template text with '{input}' when prompt_template is 'custom'.")
    prompt_key: str = Field("prompt", description="Column holding the prompt (string or chat list); with the default, rows without 'prompt' use 'question', then 'problem'.")
    answer_key: Optional[str] = Field(None, description="Column holding the answer (dotted path for nested columns); none = reward_model.ground_truth. A GSM8K solution's '#### N' and a solution's last \\boxed{} are reduced to the answer.")
    train_batch_size: PositiveInt = Field(1024, description="Prompts per RL step.")
    max_prompt_length: PositiveInt = Field(1024, description="Longest prompt (tokens); longer prompts are counted and skipped.")
    max_response_length: PositiveInt = Field(8192, description="Longest generated response (tokens).")
    shuffle: bool = Field(True, description="Shuffle the training rows each epoch.")
    synthetic: SyntheticData = Field(default_factory=SyntheticData, description="Settings of the built-in arithmetic generator.")
