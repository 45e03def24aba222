"""compiler.memory against hand-worked numbers (the arithmetic is in the comments)."""

from __future__ import annotations

import pytest

from compiler import memory as M
from compiler.catalog import CATALOG, PARAMS_B

Q7 = CATALOG["qwen2.5-7b"]
GIB = 2**30


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_total_params_match_published(name):
    assert M.total_params(CATALOG[name]) / 1e9 == pytest.approx(PARAMS_B[name], abs=6e-4)


def test_qwen7b_layer_params():
    # qkv 3584 x (28 + 2*4) x 128 = 16,515,072 + bias 4,608; o 3584 x 3584 = 12,845,056;
    # mlp 3 x 3584 x 18944 = 203,685,888; norms 2 x 3584 = 7,168  -> 233,057,792
    assert M.layer_params(Q7, 1) == 233_057_792
    # TP4: qkv 3584 x (7 + 2*1) x 128 = 4,128,768 + bias 1,152; o 896 x 3584 = 3,211,264;
    # mlp 3 x 3584 x 4736 = 50,921,472; norms 7,168 -> 58,269,824
    assert M.layer_params(Q7, 4) == 58_269_824


def test_padded_vocab():
    assert M.padded_vocab(152064, 4) == 152064  # 152064 = 297 x 512
    assert M.padded_vocab(151936, 2) == 152064  # 151936 / 256 = 593.5 -> 594 x 256
    assert M.padded_vocab(32000, 8) == 32768    # 32000 / 1024 = 31.25 -> 32 x 1024


def test_qwen7b_tp4_pp1_dp2_distributed_optimizer_state():
    # layers 28 x 58,269,824 = 1,631,555,072; embedding and output 2 x (152064/4 x 3584) = 272,498,688;
    # final norm 3,584 -> 1,904,057,344 params per TP4 x PP1 shard
    shard = M.shard_params(Q7, tp=4, pp=1, stage=0)
    assert shard == 1_904_057_344
    # distributed optimizer, DP2: (6 + 12/2) = 12 B/param -> 22,848,688,128 B = 21.28 GiB
    st = M.megatron_state_bytes(shard, dp=2, distributed_optimizer=True)
    assert st.total == 22_848_688_128
    assert st.params == 2 * shard and st.grads == 4 * shard and st.optimizer == 6 * shard
    assert st.total / GIB == pytest.approx(21.279, abs=1e-3)
    assert st.resident_idle == st.total
    # no distributed optimizer: 18 B/param
    assert M.megatron_state_bytes(shard, dp=2, distributed_optimizer=False).total == 18 * shard
    # offload: optimizer on CPU; 2 + 4 B while training, 2 B while generating
    off = M.megatron_state_bytes(shard, dp=2, offload=True)
    assert off.total == 6 * shard and off.resident_idle == 2 * shard


def test_pipeline_stages_hold_embedding_and_output():
    q05 = CATALOG["qwen2.5-0.5b"]  # tied embeddings, 24 layers of 14,912,384
    # PP1: one tied matrix 151936 x 896 = 136,134,656 + 24 layers 357,897,216 + norm 896 = 494,032,768
    assert M.shard_params(q05, 1, 1, 0) == 494_032_768 == M.total_params(q05)
    # PP2: stage 0 = 12 layers 178,948,608 + embedding 136,134,656 = 315,083,264;
    # stage 1 keeps its own copy of the tied matrix + final norm: 315,084,160
    assert [M.shard_params(q05, 1, 2, s) for s in range(2)] == [315_083_264, 315_084_160]


def test_fsdp_state():
    # 16 B/param over the world + two gathered bf16 layers (2 x 2 B x 233,057,792)
    st = M.fsdp_state_bytes(7_615_616_512, 16, 233_057_792)
    assert st.total == pytest.approx(16 * 7_615_616_512 / 16 + 4 * 233_057_792)


def test_kv_bytes_per_token():
    assert M.kv_bytes_per_token(Q7, 1) == 2 * 28 * 4 * 128 * 2 == 57344
    assert M.kv_bytes_per_token(Q7, 2) == 28672
    # TP4 and TP8 >= 4 KV heads: one replicated head per rank -> stops shrinking at 2*28*1*128*2
    assert M.kv_bytes_per_token(Q7, 4) == M.kv_bytes_per_token(Q7, 8) == 14336
    llama = CATALOG["llama3.1-8b"]  # 8 KV heads: TP8 -> exactly one head per rank
    assert M.kv_bytes_per_token(llama, 1) == 2 * 32 * 8 * 128 * 2 == 131072
    assert M.kv_bytes_per_token(llama, 8) == 2 * 32 * 1 * 128 * 2 == 16384
    ds = CATALOG["deepseek-math-7b"]  # MHA: 32 KV heads of 128, 30 layers
    assert M.kv_bytes_per_token(ds, 1) == 2 * 30 * 32 * 128 * 2 == 491520
    assert M.kv_bytes_per_token(ds, 8) == 2 * 30 * 4 * 128 * 2 == 61440


def test_logits_bytes_v152k_8k_tokens():
    # E = 8192 tokens x 152064 vocab = 1,245,708,288 logits; one chunk: 16 Mi // 152064 = 110 tokens
    e = 8192 * 152064
    assert M.logprob_chunk_tokens(1, 152064) == 110
    k = 110 * 152064
    # forward-only log-probs: bf16 logits and GPTModel's transposed copy (2 x 2 B), above the logits
    # plus a chunk's gather, upcast and exp (2 + 4 + 4 B) -> 4E = 4,982,833,152 B (4.64 GiB)
    assert 10 * k < 2 * e
    assert M.logits_bytes(Q7, 8192, 1, 1, grad=False) == 4 * e == 4_982_833_152
    # training: 4E + the larger of a chunk's 12 B and the output weight's bf16 gradient 2Vh, + 4sbh
    assert 12 * k < 2 * 152064 * 3584
    want = 4 * e + 2 * 152064 * 3584 + 4 * 8192 * 3584
    assert M.logits_bytes(Q7, 8192, 1, 1, grad=True, entropy=True) == want == 6_190_268_416
    assert M.logits_bytes(Q7, 8192, 1, 1, grad=True, entropy=False) == want  # entropy costs no buffer
    # TP4 splits the vocabulary (152064 is a multiple of 512, no padding)
    assert M.logits_bytes(Q7, 8192, 1, 4, grad=False) == 4 * e / 4
    # the CPU trainer's fp32 logits: no upcast copy; at s = 8 (b = 1) the chunk term wins
    assert M.logits_bytes(Q7, 8192, 1, 1, grad=False, logit_bytes=4) == 8 * e
    assert M.logits_bytes(Q7, 8, 1, 1, grad=False, logit_bytes=4) == 4 * 8 * 152064 + 8 * k
    # Korthikanti's 4sbh(1 + V/h) counts fp32 logits only: 4E + 4sbh, below our forward-with-grad figure
    assert 4 * e + 4 * 8192 * 3584 < M.logits_bytes(Q7, 8192, 1, 1)


def test_token_multiple_hand_checked():
    assert M.token_multiple(1, True) == 1 and M.token_multiple(8, False) == 1
    assert [M.token_multiple(t, True) for t in (2, 4, 8)] == [2, 4, 8]
    assert M.token_multiple(4, True, "tensorwise") == 64 and M.token_multiple(4, True, "blockwise") == 512
    assert M.token_multiple(1, False, "delayed") == 16


def test_layer_activations_swiglu_gqa():
    # sb(8h + 4ad + 4gd + 6f) + 4sba at s=4096, b=1:
    # 8h = 28,672; 4ad = 14,336; 4gd = 4 x 4 x 128 = 2,048; 6f = 113,664 -> 158,720 per token
    # 4096 x 158,720 = 650,117,120 + lse 4 x 4096 x 28 = 458,752 -> 650,575,872
    assert M.layer_activation_bytes(Q7, 4096, 1, 1) == 650_575_872
    # about 44.3 sbh (vs 34 sbh for the GeLU/MHA layer of Korthikanti et al.)
    assert 650_575_872 / (4096 * 3584) == pytest.approx(44.3, abs=0.05)
    # TP2 + SP: (8h + 4ad + 6f)/2 + 4 g_r d with g_r = 2: 78,336 + 1,024 = 79,360 per token, + 4 x 28/2 lse
    assert M.layer_activation_bytes(Q7, 4096, 1, 2, True) == 4096 * (79_360 + 56)
    # TP2 without SP: the 8h norm/input terms stay whole
    assert M.layer_activation_bytes(Q7, 4096, 1, 2, False) == 4096 * (28_672 + (14_336 + 113_664) / 2 + 1_024 + 56)


def test_stage_activations_recompute():
    per_layer = M.layer_activation_bytes(Q7, 9216, 1, 2)
    inp = M.layer_input_bytes(Q7, 9216, 1, 2)
    assert inp == 2 * 9216 * 3584 / 2
    # full recompute, PP1: 28 layer inputs + one live layer
    assert M.stage_activation_bytes(Q7, 9216, 1, 2, 1, 0, 64, "full") == 28 * inp + per_layer
    # no recompute: every layer's activations
    assert M.stage_activation_bytes(Q7, 9216, 1, 2, 1, 0, 64, "none") == 28 * per_layer
    # 1F1B on PP2: stage 0 keeps 2 micro-batches in flight of its 14 layers, stage 1 one
    assert M.stage_activation_bytes(Q7, 9216, 1, 2, 2, 0, 64, "none") == 2 * 14 * per_layer
    assert M.stage_activation_bytes(Q7, 9216, 1, 2, 2, 1, 64, "none") == 14 * per_layer
    assert M.stage_activation_bytes(Q7, 9216, 1, 2, 2, 0, 1, "none") == 14 * per_layer  # only 1 micro-batch


def test_vllm_memory_carving():
    cap = 80 * GIB
    v = M.vllm_memory(Q7, 1, 0.9, cap)
    # weights: 2 B x (28 layers + embedding + lm_head (152064 = 2376 x 64) + norm) = 2 x 7,615,616,512
    assert v.weights == 2 * 7_615_616_512
    assert v.reservation == 0.9 * cap
    assert v.kv_cache == pytest.approx(v.reservation - v.weights - v.activations - v.cuda_graphs - v.non_torch)
    assert v.kv_tokens == int(v.kv_cache // 57344) // 16 * 16
    # roughly 72 GiB - 14.2 weights - ~1.1 activations - 0.55 -> ~56 GiB of KV = ~1.05M tokens
    assert 1.0e6 < v.kv_tokens < 1.1e6
    # sleep: levels 1 and 2 leave CUDA graphs and non-torch buffers; level 0 keeps everything
    assert v.sleeping(0) == v.reservation
    assert v.sleeping(1) == v.sleeping(2) == v.cuda_graphs + v.non_torch
    # enforce_eager: no graph memory, a little more KV
    assert M.vllm_memory(Q7, 1, 0.9, cap, enforce_eager=True).kv_tokens > v.kv_tokens


def test_vllm_tp_shrinks_weights_and_kv_stops_at_kv_heads():
    llama = CATALOG["llama3.1-8b"]
    v1 = M.vllm_memory(llama, 1, 0.6, 80 * GIB)
    v8 = M.vllm_memory(llama, 8, 0.6, 80 * GIB)
    assert v8.weights < v1.weights / 7
    assert v8.kv_bytes_per_token == 16384
    # a replica's capacity grows ~8x from the KV split alone, plus the freed weight memory
    assert v8.kv_tokens > 8 * v1.kv_tokens


def test_kv_capacity_one_sequence_and_concurrency():
    assert M.max_concurrency(100_000, 9216, 256) == 10
    assert M.max_concurrency(10_000_000, 9216, 256) == 256
    assert M.max_concurrency(9000, 9216, 256) == 0
    # a reservation too small for the weights leaves a negative KV budget and no tokens
    v = M.vllm_memory(CATALOG["qwen2.5-32b"], 1, 0.75, 80 * GIB)
    assert v.kv_cache < 0 and v.kv_tokens == 0
