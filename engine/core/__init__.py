"""The engine's lowest layer: small facts and utilities every other package may use.

`engine.core` imports nothing else of the engine (nor the compiler): only the standard library,
torch and pyarrow, each imported where a function needs it. Its modules:

* `batch`: the trainer batch's layout: its keys (`Batch`), the per-prompt keys (`GROUP_KEYS`),
  left-padding of token lists;
* `generation`: what a generator is asked for and returns (`SamplingParams`, `Generation`);
* `tokens`: facts read from a tokenizer (`end_token_ids`);
* `files`: reading data files row by row;
* `atomic`: atomic writes (a temporary name, then a rename);
* `rollouts`: the run folder's saved rollouts (written by the loop and evaluation, read by the study);
* `threads`: how many torch threads a CPU run uses;
* `duration`: durations as text.
"""
