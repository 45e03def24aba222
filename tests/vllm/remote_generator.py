"""A vLLM generator in its own process, driven over stdin/stdout (the split-placement test's replica).

Started as ``python tests/vllm/remote_generator.py MODEL_DIR`` (repo root on PYTHONPATH); reads one JSON command per line and
answers one line ``@@ <json>`` (vLLM's own logging also goes to stdout, so replies carry a prefix).
Commands: ``generate`` (greedy on the given prompts), ``join`` (enter the broadcast group),
``receive`` (take one weight stream from it), ``handles`` (map one weight stream a trainer process
hands over by shared-memory handles), ``quit``.
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
                params = SamplingParams(max_new_tokens=cmd["max_new_tokens"], temperature=0.0,
                                        logprobs=bool(cmd.get("logprobs")))
                out = gen.generate(cmd["prompts"], 1, params, 0)
                reply({"ids": out.response_ids, "log_probs": out.log_probs})
            elif op == "join":
                reply({"ranks": gen.join_broadcast(cmd["host"], cmd["port"], cmd["world_size"], 1)})
            elif op == "receive":
                reply({"received": gen.receive_weights(cmd.get("expected"))})
            elif op == "handles":
                reply({"received": gen.receive_by_handles([cmd["channel"]], cmd.get("expected"))})
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
