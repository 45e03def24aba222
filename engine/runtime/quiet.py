"""Keep the model libraries' own chatter out of a run's output.

transformers draws a "Loading weights" / "Writing model shards" progress bar for every model it loads
or saves (several per run: the trainer, the generator, the reference, the export), and some releases
warn (`FutureWarning`) about ``is_gradient_checkpointing``. Neither tells a user anything about the
run; the engine prints its own progress. Errors and other warnings are left alone.
"""

from __future__ import annotations

import os
import sys
import warnings

#: Set for this process and the processes it starts (Ray workers): huggingface_hub reads it on import.
PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


def quiet_model_libraries() -> None:
    """Turn off transformers' progress bars and its ``is_gradient_checkpointing`` FutureWarning."""
    os.environ.setdefault(PROGRESS_ENV, "1")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
