"""A vLLM generator in its own process, driven over stdin/stdout (the split-placement test's replica).

Started as ``python tests/vllm/remote_generator.py MODEL_DIR`` (repo root on PYTHONPATH); reads one JSON command per line and
answers one line ``@@ <json>`` (vLLM's own logging also goes to stdout, so replies carry a prefix).
Commands: ``generate`` (greedy on the given prompts), ``join`` (enter the broadcast group),
``receive`` (take one weight stream from it), ``quit``.
"""

from __future__ import annotations

import json
import sys


def reply(obj) -> None:
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(model_dir: str) -> None:
    from engine.backends.base import SamplingParams
    from engine.backends.manifest import WeightSyncError
    from engine.backends.vllm_generator import VLLMGenerator
    from engine.modeling import load_tokenizer

    gen = VLLMGenerator(model_dir, load_tokenizer(model_dir), in_process=True, tensor_parallel_size=1,
                        max_model_len=128, max_num_seqs=16, seed=0, dtype="float32", enforce_eager=True,
                        kv_cache_memory_bytes=32 << 20)
    reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "generate":
                out = gen.generate(cmd["prompts"], 1, SamplingParams(max_new_tokens=cmd["max_new_tokens"], temperature=0.0), 0)
                reply({"ids": out.response_ids})
            elif op == "join":
                reply({"ranks": gen.join_broadcast(cmd["host"], cmd["port"], cmd["world_size"], 1)})
            elif op == "receive":
                reply({"received": gen.receive_weights(cmd.get("expected"))})
            elif op == "quit":
                reply({"bye": True})
                break
        except WeightSyncError as e:
            reply({"error": "WeightSyncError", "message": str(e), "missing": e.missing, "duplicate": e.duplicate})
        except Exception as e:  # reported to the test, which fails on it
            reply({"error": type(e).__name__, "message": str(e)})
    gen.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
