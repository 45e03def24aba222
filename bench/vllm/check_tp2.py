"""Hand check (not a test: two vLLM worker processes take minutes to start on 2 cores): the vLLM
generator at tensor parallel 2 on CPU.

    python bench/vllm/check_tp2.py

Prints True for: fresh greedy output = the HF model's; after a colocated update to other weights,
greedy output = the HF model's with those; after a split-placement update over a gloo broadcast group
of trainer rank 0 plus both TP workers (ranks 1 and 2), greedy output = the HF model's again.
"""

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "vllm")]


def main():
    from vllm_testlib import build_model, PROMPT_TEXTS, free_port
    from engine.quickstart.tokenizer import build_tokenizer
    from engine.backends.base import SamplingParams
    from engine.backends.hf_generator import HFGenerator
    from engine.backends.manifest import bucketed
    from engine.backends.weight_transfer import BroadcastGroup
    from engine.backends.vllm_generator import VLLMGenerator, cpu_threads_bind
    tok = build_tokenizer()
    root = Path(tempfile.mkdtemp(prefix="vllm-tp2-"))
    a = build_model(root / "a", 11, tok); b = build_model(root / "b", 12, tok)
    prompts = [tok.encode(t) for t in PROMPT_TEXTS]
    G = SamplingParams(max_new_tokens=16, temperature=0.0)
    ref = {k: HFGenerator(m, tok).generate(prompts, 1, G, 0).response_ids for k, m in (("a", a), ("b", b))}
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind(2))
    t0 = time.time()
    g = VLLMGenerator(str(root / "b"), tok, tensor_parallel_size=2, max_model_len=128, max_num_seqs=16, seed=0,
                      dtype="float32", enforce_eager=True, kv_cache_memory_bytes=32 << 20)
    print("START", time.time() - t0, flush=True)
    print("FRESH_B", g.generate(prompts, 1, G, 0).response_ids == ref["b"], flush=True)
    names = [n for n, _ in a.named_parameters()]
    g.update_weights(bucketed(((n, p.detach()) for n, p in a.named_parameters()), 40000), names)
    print("COLOC_A", g.generate(prompts, 1, G, 0).response_ids == ref["a"], flush=True)
    port = free_port()
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("g", BroadcastGroup("127.0.0.1", port, 3, 0))); th.start()
    print("RANKS", g.join_broadcast("127.0.0.1", port, 3, 1), flush=True); th.join()
    th = threading.Thread(target=lambda: box.setdefault("n", box["g"].send(bucketed(((n, p.detach()) for n, p in b.named_parameters()), 40000)))); th.start()
    print("RECV", g.receive_weights(names), flush=True); th.join()
    print("SPLIT_B", g.generate(prompts, 1, G, 0).response_ids == ref["b"], flush=True)
    g.shutdown()

if __name__ == "__main__":
    main()
