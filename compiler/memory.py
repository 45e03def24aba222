"""Memory model of the compiler: pure arithmetic, no torch.

Every function returns **bytes** (int or float) unless its name ends in ``_gib``; 1 GiB = 2**30 bytes.
Element counts (parameters, tokens) are plain ints. Notation used in the docstrings:

    s   sequence length of one sample (prompt + response, tokens)
    b   micro-batch (sequences)
    h   hidden size;  a  query heads;  d  head dim;  g  KV heads (GQA groups);  f  SwiGLU ffn width
    L   layers;  V   vocabulary;  Vp  padded vocabulary;  t  tensor parallel;  p  pipeline parallel

The formulas follow Megatron-core's layout (column/row-parallel linears, vocab-parallel embedding
and output layer, sequence parallel, distributed optimizer) and vLLM's memory profiling. They are
estimates: each one documents what it counts and what it leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import Architecture

GIB = 1 << 30

#: Per-process CUDA context, NCCL communicators, cuBLAS/TE workspaces and allocator slack of a
#: trainer process (bytes). Measured Megatron processes sit at 1.5-3 GiB before any tensor.
TRAINER_OVERHEAD = int(2.0 * GIB)
#: vLLM CUDA-graph memory (bytes); MODELS.md: 0.2-0.4 GiB. Zero with enforce_eager.
VLLM_CUDA_GRAPHS = int(0.3 * GIB)
#: vLLM memory allocated outside torch (NCCL, cuBLAS workspace), counted inside its reservation.
VLLM_NON_TORCH = int(0.25 * GIB)
#: Extra non-torch memory of a vLLM rank when TP > 1 (NCCL/custom all-reduce buffers).
VLLM_NON_TORCH_TP = int(0.25 * GIB)
#: Tokens in vLLM's profiling forward (the chunked-prefill token budget, max_num_batched_tokens).
VLLM_PROFILE_TOKENS = 8192


def gib(nbytes: float) -> float:
    """Bytes -> GiB (float)."""
    return nbytes / GIB


def ceil_to(x: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= x."""
    return -(-x // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

def padded_vocab(vocab: int, tp: int, multiple: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of ``multiple * tp`` rows (tokens)."""
    return ceil_to(vocab, multiple * tp)


def kv_heads_per_rank(arch: Architecture, tp: int) -> int:
    """KV heads held by one TP rank: g/t, or 1 replicated head when t >= g (t % g == 0)."""
    g = arch.num_kv_heads
    return g // tp if g % tp == 0 else 1


def layer_params(arch: Architecture, tp: int = 1) -> int:
    """Parameters of one decoder layer held by one TP rank (elements).

    q/k/v (column parallel): h * (a/t + 2*g_r) * d, plus the same count of biases for Qwen2;
    output projection (row parallel): (a*d/t) * h; SwiGLU fc1 (gate+up) h * 2f/t, fc2 (f/t) * h;
    two RMSNorm weights of h (replicated on every rank). g_r = kv_heads_per_rank.
    """
    h, d = arch.hidden_size, arch.kv_channels
    q_cols = arch.num_heads * d / tp
    qkv_out = q_cols + 2 * kv_heads_per_rank(arch, tp) * d
    attn = h * qkv_out + (qkv_out if arch.qkv_bias else 0) + q_cols * h
    mlp = 3 * h * arch.ffn_hidden_size / tp
    return int(attn + mlp + 2 * h)


def total_params(arch: Architecture) -> int:
    """Unsharded parameter count (elements), unpadded vocabulary, as published."""
    emb = arch.vocab_size * arch.hidden_size
    out = 0 if arch.tied_embeddings else emb
    return arch.num_layers * layer_params(arch, 1) + emb + out + arch.hidden_size


def stage_layers(arch: Architecture, pp: int, stage: int) -> int:
    """Decoder layers on pipeline stage ``stage`` (even split; the remainder goes to the last stages)."""
    base, rem = divmod(arch.num_layers, pp)
    return base + (1 if stage >= pp - rem else 0)


def shard_params(arch: Architecture, tp: int = 1, pp: int = 1, stage: int = 0) -> int:
    """Parameters on one TP x PP shard (elements) - what one Megatron GPU owns.

    stage layers x layer_params(t); the first stage adds the input embedding (Vp/t * h, Vp padded to
    128*t); the last stage adds the final norm (h) and the output layer (Vp/t * h). With tied
    embeddings and p == 1 the output layer is the embedding (counted once); with p > 1 the last
    stage keeps its own copy of the tied matrix (Megatron synchronises the two copies' gradients).
    """
    vp = padded_vocab(arch.vocab_size, tp)
    emb = vp // tp * arch.hidden_size
    n = stage_layers(arch, pp, stage) * layer_params(arch, tp)
    first, last = stage == 0, stage == pp - 1
    if first:
        n += emb
    if last:
        n += arch.hidden_size
        if not (arch.tied_embeddings and first):
            n += emb
    return n


def max_shard_params(arch: Architecture, tp: int = 1, pp: int = 1) -> int:
    """Largest ``shard_params`` over the pipeline stages (elements)."""
    return max(shard_params(arch, tp, pp, s) for s in range(pp))


# --------------------------------------------------------------------------------------------
# Model state (params, grads, optimizer)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelState:
    """Bytes of model state on one GPU, by component, in two phases.

    ``params``/``grads``/``optimizer`` are what is resident while the trainer computes (forward,
    backward, optimizer step); ``resident_idle`` is what stays on the GPU while the generator runs
    (colocated), i.e. everything unless offloaded.
    """

    params: float
    grads: float
    optimizer: float
    resident_idle: float

    @property
    def total(self) -> float:
        """Bytes while training."""
        return self.params + self.grads + self.optimizer


def megatron_state_bytes(shard: int, dp: int, distributed_optimizer: bool = True, offload: bool = False) -> ModelState:
    """Megatron model state of one GPU holding ``shard`` parameters (bytes).

    bf16 params 2 B + fp32 main grads 4 B + (fp32 master 4 + Adam m 4 + v 4 = 12 B), the 12 B being
    divided over the ``dp`` data-parallel replicas by the distributed optimizer:
    (6 + 12/dp) B/param, or 18 B/param without it.
    offload: optimizer states and fp32 masters live on the CPU (CPU Adam), grads are on the GPU
    only during backward and leave it between updates; the GPU keeps 2 B params + 4 B grads while
    training and 2 B params while the generator runs.
    """
    p = 2.0 * shard
    g = 4.0 * shard
    o = 0.0 if offload else 12.0 * shard / (dp if distributed_optimizer else 1)
    idle = p if offload else p + g + o
    return ModelState(p, g, o, idle)


def fsdp_state_bytes(params: int, world: int, largest_layer: int, offload: bool = False) -> ModelState:
    """torch FSDP (full shard) with fp32 masters: about 16 B/param / world (bytes).

    fp32 params 4 + fp32 grads 4 + Adam 8 = 16 B per parameter, sharded over ``world``; plus the
    bf16 all-gathered working copy of the layer being computed and of the prefetched next one
    (2 x 2 B x largest_layer). offload (CPUOffload): the shards live on the CPU; only the gathered
    layers stay.
    """
    gathered = 4.0 * largest_layer
    if offload:
        return ModelState(gathered, 0.0, 0.0, 0.0)
    return ModelState(4.0 * params / world + gathered, 4.0 * params / world, 8.0 * params / world,
                      16.0 * params / world)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

def layer_activation_bytes(arch: Architecture, seq: int, micro_batch: int, tp: int = 1,
                           sequence_parallel: bool = True) -> float:
    """Activations one decoder layer saves for backward, no recompute, flash attention (bytes).

    Korthikanti et al. (2022) count sbh(34 + 5as/h) for a GPT layer (4h GeLU MLP, MHA, dropout,
    LayerNorm, materialised s x s scores). Redoing their tally for a SwiGLU / GQA / RMSNorm decoder
    without dropout, in bf16 (2 B per element), with flash attention (no s x s tensor: the 5as/h
    term disappears, replaced by the fp32 log-sum-exp of 4 B per (s, b, head)):

    * attention: RMSNorm output = q/k/v input 2sbh; rotated Q 2sb(ad); K and V 2 x 2sb(gd);
      attention output O (flash-attention output, also the out-projection input) 2sb(ad);
      log-sum-exp 4sba                                 -> 2sbh + 4sb(ad) + 4sb(gd) + 4sba
    * MLP: RMSNorm output = fc1 input 2sbh; fc1 output (gate and up, 2f) 4sbf; SwiGLU output =
      fc2 input 2sbf                                    -> 2sbh + 6sbf
    * two RMSNorm inputs (the residual stream) 2 x 2sbh -> 4sbh

    Total sb(8h + 4ad + 4gd + 6f) + 4sba. With tensor parallel t and sequence parallel every term
    is split t ways, except K/V whose heads are replicated once t >= g (g_r = max(g/t, 1)). Without
    sequence parallel the 8h of norms and linear inputs are replicated on every TP rank.
    Check: a=h/d MHA, f=4h GeLU would give 34sbh with dropout; here Qwen2.5-7B gives ~44.3sbh.
    """
    s, b, h, d = seq, micro_batch, arch.hidden_size, arch.kv_channels
    a, f = arch.num_heads, arch.ffn_hidden_size
    gr = kv_heads_per_rank(arch, tp)
    sharded = (4 * a * d + 6 * f) / tp + 4 * gr * d + 4 * a / tp
    norms = 8 * h / tp if (sequence_parallel and tp > 1) else 8 * h
    return float(s * b * (sharded + norms))


def layer_input_bytes(arch: Architecture, seq: int, micro_batch: int, tp: int = 1, sequence_parallel: bool = True) -> float:
    """The bf16 input of one layer, 2sbh (/t with sequence parallel): what full recompute keeps (bytes)."""
    div = tp if (sequence_parallel and tp > 1) else 1
    return 2.0 * seq * micro_batch * arch.hidden_size / div


def stage_activation_bytes(arch: Architecture, seq: int, micro_batch: int, tp: int = 1, pp: int = 1,
                           stage: int = 0, microbatches: int = 1, recompute: str = "full",
                           sequence_parallel: bool = True) -> float:
    """Training activations held by one GPU of pipeline stage ``stage`` at its peak (bytes).

    1F1B keeps min(p - stage, m) micro-batches in flight on stage ``stage`` (m = micro-batches per
    optimizer step), each saving its layers' activations:

    * none / selective: L_stage x layer_activation_bytes. Megatron's selective recompute recomputes
      the core attention; with flash attention that term is already gone (Korthikanti's sbh*34/t
      with SP), so selective is counted like none.
    * full (one layer per checkpoint): L_stage x layer_input_bytes per micro-batch in flight, plus
      one layer's full activations live during its recompute/backward.
    """
    inflight = max(1, min(pp - stage, microbatches))
    n = stage_layers(arch, pp, stage)
    per_layer = layer_activation_bytes(arch, seq, micro_batch, tp, sequence_parallel)
    if recompute == "full":
        return inflight * n * layer_input_bytes(arch, seq, micro_batch, tp, sequence_parallel) + per_layer
    return inflight * n * per_layer


def token_multiple(tp: int, sequence_parallel: bool, fp8: str = "none") -> int:
    """The multiple (tokens) the Megatron trainer pads every micro-batch's sequence length to: TP
    under sequence parallelism (the sequence is scattered over the TP ranks); under FP8 each rank's
    token count must also be a multiple of 16 (per-tensor recipes) or 128 (blockwise), hence 16 x TP
    (128 x TP) with sequence parallelism, 16 (128) without."""
    sp = tp if (sequence_parallel and tp > 1) else 1
    if fp8 in (None, "none"):
        return sp
    return sp * (128 if fp8 == "blockwise" else 16)


#: fp32 elements of one chunk of the log-prob pass (`engine.backends.megatron.logprobs`): 16 Mi.
LOGPROB_CHUNK_ELEMENTS = 1 << 24


def logprob_chunk_tokens(rows: int, v_local: int, budget: int = LOGPROB_CHUNK_ELEMENTS) -> int:
    """Response tokens per chunk of the log-prob pass: as many as keep rows x tokens x v_local within
    ``budget`` elements, at least one (tokens)."""
    return max(1, budget // max(1, rows * v_local))


def logits_bytes(arch: Architecture, seq: int, micro_batch: int, tp: int = 1, *, grad: bool = True,
                 entropy: bool = True, logit_bytes: int = 2) -> float:
    """Peak memory of the output layer and the log-prob pass on the last stage (bytes).

    E = s*b*Vp/t logit elements of ``logit_bytes`` (lb) each (bf16 on GPU: 2; the CPU trainer's fp32:
    4); K = c*b*Vp/t elements of one chunk (c = `logprob_chunk_tokens`); u = 4 B of fp32 upcast per
    chunk element when lb < 4 (none for fp32 logits). What the Megatron trainer holds
    (`engine.backends.megatron.logprobs`; measured on CPU in tests/megatron/test_megatron_layout.py):

      * the output layer writes [s, b, Vp/t] and GPTModel returns a transposed contiguous copy:
        2E x lb while both live;
      * forward only (old / reference log-probs): the logits plus one chunk's gathered copy (lb),
        upcast (u) and exp (4 B) -> lb E + max(lb E, K (lb + u + 4));
      * training: the logits are the only large tensor saved; the backward writes the gradient into
        one E x lb buffer chunk by chunk, a chunk holding its gathered copy, upcast, exp and (bf16)
        down-cast -> 2 lb E + K (lb + u + 4 + u/2); the output layer's backward then forms its weight
        gradient (lb x Vp/t x h) before DDP adds it to the fp32 main grad, so the larger of the two,
        plus the output layer's input and the final norm's (2 lb x sbh/t).

    The entropy costs no buffer (``entropy`` is kept for callers). At V=152K, s=8K, b=1, t=1 in
    bf16: 4E = 4.98 GB without grad (the former fp32 working copies counted 6E and needed 18E).
    """
    vp = padded_vocab(arch.vocab_size, tp)
    v_local = vp // tp
    lb = float(logit_bytes)
    up = 4.0 if lb < 4 else 0.0
    e = seq * micro_batch * v_local
    k = logprob_chunk_tokens(micro_batch, v_local) * micro_batch * v_local
    if not grad:
        return lb * e + max(lb * e, k * (lb + up + 4.0))
    chunk = k * (lb + up + 4.0 + up / 2.0)
    return 2.0 * lb * e + max(chunk, lb * v_local * arch.hidden_size) + 2.0 * lb * seq * micro_batch * arch.hidden_size / tp


# --------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------

def kv_bytes_per_token(arch: Architecture, tp: int = 1, dtype_bytes: int = 2) -> int:
    """KV cache bytes per token on one TP rank: 2 (K and V) x L x g_r x d x 2 B (bf16).

    g_r = g/t, or 1 replicated head per rank when t >= g, so the per-GPU KV cost stops shrinking.
    Qwen2.5-7B at t=1: 2 x 28 x 4 x 128 x 2 = 57344 B.
    """
    return 2 * arch.num_layers * kv_heads_per_rank(arch, tp) * arch.kv_channels * dtype_bytes


def vllm_weight_bytes(arch: Architecture, tp: int = 1) -> float:
    """bf16 weights of one vLLM rank (bytes): layers/t (KV replicated when t >= g), embedding and
    lm_head vocab-parallel (padded to 64*t rows; tied models hold one matrix), final norm."""
    vp = ceil_to(arch.vocab_size, 64 * tp)
    emb = vp // tp * arch.hidden_size
    n = arch.num_layers * layer_params(arch, tp) + emb * (1 if arch.tied_embeddings else 2) + arch.hidden_size
    return 2.0 * n


def vllm_profile_activation_bytes(arch: Architecture, tp: int = 1, max_num_seqs: int = 256,
                                  tokens: int = VLLM_PROFILE_TOKENS) -> float:
    """Peak torch activation of vLLM's profiling forward (bytes), which vLLM subtracts from its budget.

    ``tokens`` (the batched-token budget) pass one layer at a time: fc1 output 2 x 2f/t, SwiGLU
    output 2f/t, q/k/v output 2(a+2g_r)d/t and ~4 hidden-size buffers (residual, norm output,
    attention output, all-reduce) 4 x 2h -> tokens x (6f/t + 2(a/t+2g_r)d + 8h) B; plus the sampler
    over max_num_seqs last positions: full-vocabulary fp32 logits, probabilities and log-probs
    (3 x 4 B x V per sequence).
    """
    h, d, f = arch.hidden_size, arch.kv_channels, arch.ffn_hidden_size
    per_tok = 6 * f / tp + 2 * (arch.num_heads / tp + 2 * kv_heads_per_rank(arch, tp)) * d + 8 * h
    return tokens * per_tok + 12.0 * max_num_seqs * arch.vocab_size


@dataclass(frozen=True)
class VllmMemory:
    """One vLLM rank's reservation broken down (bytes) and its KV capacity (tokens per replica)."""

    reservation: float
    weights: float
    activations: float
    cuda_graphs: float
    non_torch: float
    kv_cache: float
    kv_tokens: int
    kv_bytes_per_token: int

    def sleeping(self, level: int) -> float:
        """Bytes left on the GPU while the engine sleeps (colocated training phase).

        level 0: nothing is released (the whole reservation stays); level 1: weights are offloaded
        to pinned CPU memory and the KV cache is discarded; level 2: weights and KV cache are
        discarded (reloaded from the trainer at wake-up). CUDA-graph memory and non-torch buffers
        stay in every level. Levels 1 and 2 free the same GPU memory; 2 also spares host RAM.
        """
        return self.reservation if level == 0 else self.cuda_graphs + self.non_torch


def vllm_memory(arch: Architecture, tp: int, utilization: float, capacity: float, *,
                max_num_seqs: int = 256, enforce_eager: bool = False) -> VllmMemory:
    """vLLM's per-rank reservation (bytes): utilization x capacity, carved into weights/t,
    profiling activations, CUDA graphs, non-torch buffers and (the rest) KV cache.

    Follows vLLM V1: the engine may use ``utilization x total`` bytes in all; the KV cache gets
    what its weights, the profiling run's activation peak and non-torch memory leave. CUDA graphs
    (0.3 GiB unless enforce_eager) are counted inside the reservation, as in MODELS.md. A negative
    remainder means vLLM refuses to start ("no available memory for the cache blocks").
    kv_tokens = kv_cache / kv_bytes_per_token(t), rounded down to 16-token blocks.
    """
    res = utilization * capacity
    w = vllm_weight_bytes(arch, tp)
    act = vllm_profile_activation_bytes(arch, tp, max_num_seqs)
    graphs = 0.0 if enforce_eager else float(VLLM_CUDA_GRAPHS)
    other = float(VLLM_NON_TORCH + (VLLM_NON_TORCH_TP if tp > 1 else 0))
    kv = res - w - act - graphs - other
    per_tok = kv_bytes_per_token(arch, tp)
    tokens = max(0, int(kv // per_tok) // 16 * 16)
    return VllmMemory(res, w, act, graphs, other, kv, tokens, per_tok)


def hf_generation_bytes(arch: Architecture, sequences: int, seq_len: int, dtype_bytes: int = 2) -> float:
    """transformers ``generate`` without paging (bytes): a dense KV cache of ``sequences`` x
    ``seq_len`` tokens (`kv_bytes_per_token` unsharded: 2 x L x g x d x dtype) plus fp32
    last-position logits (4 B x V) per sequence."""
    kv = kv_bytes_per_token(arch, 1, dtype_bytes)
    return float(sequences * (seq_len * kv + 4 * arch.vocab_size))


def max_concurrency(kv_tokens: int, seq_len: int, max_num_seqs: int) -> int:
    """Sequences of ``seq_len`` tokens a replica can decode at once (KV capacity and max_num_seqs)."""
    return max(0, min(max_num_seqs, kv_tokens // max(1, seq_len)))


def largest_tensor_bytes(arch: Architecture) -> float:
    """bf16 bytes of the largest HF-named tensor the weight stream gathers whole: the embedding (or
    output layer), V x h, or an MLP projection, f x h (the stream sends gate and up separately)."""
    return 2.0 * max(arch.vocab_size, arch.ffn_hidden_size) * arch.hidden_size


def sync_transient_bytes(arch: Architecture, bucket_bytes: int) -> float:
    """What the weight push holds on a trainer GPU beyond the model state (bytes): one gathered full
    tensor (every TP rank gathers it) and, on the source rank, the bucket of full tensors being
    packed (counted on every rank, as the source's is the worst)."""
    return largest_tensor_bytes(arch) + float(bucket_bytes)


def attention_flops_per_seq(arch: Architecture, seq: int) -> float:
    """Causal attention matmul FLOPs of one forward over one sequence: 2 x 2 x L x s^2 x (a d) / 2."""
    return 2.0 * arch.num_layers * seq * seq * arch.num_heads * arch.kv_channels
