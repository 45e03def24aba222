"""`cluster:` the machines a run may use."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, PositiveFloat, PositiveInt

from schemas.common import Section


class ClusterSpec(Section):
    """Hardware available to the run."""

    accelerator: Literal["gpu", "cpu"] = Field("gpu", description="gpu, or cpu for the embedded CPU default (one process, no GPUs).")
    nodes: PositiveInt = Field(1, description="Machines.")
    gpus_per_node: int = Field(8, ge=0, description="GPUs per machine.")
    gpu_memory_gib: PositiveFloat = Field(80.0, description="Memory per GPU (GiB).")
    gpu_bf16_tflops: PositiveFloat = Field(989.0, description="Peak dense bf16 throughput per GPU (TFLOP/s), for step-time estimates.")
    gpu_mem_bandwidth_gbs: PositiveFloat = Field(3350.0, description="GPU memory bandwidth (GB/s), for decode-time estimates.")
    ray_address: Optional[str] = Field(None, description="Ray cluster address; none runs in-process (or a local Ray when the plan spans GPUs).")
    cpu_threads: Union[PositiveInt, Literal["auto"], None] = Field(
        "auto", description="CPU runs: torch threads; 'auto' = the CPUs this process may use (affinity) less those "
                            "other processes keep busy (load average); null = torch's default.")
    memory_headroom_gib: float = Field(
        2.0, ge=0, description="GiB of each GPU the planner leaves unplanned: the gap between the nominal and the "
                               "exposed memory (about 0.4 GiB on an 80 GB H100), allocator fragmentation, and "
                               "CUDA context growth past the modelled overhead.")
    network_interface: Optional[str] = Field(
        None, description="Network interface gloo and NCCL bind to on every node (GLOO_SOCKET_IFNAME, "
                          "NCCL_SOCKET_IFNAME), e.g. eth0; none lets them pick.")
    processes: PositiveInt = Field(1, description="CPU runs: local rank processes of the trainer (TP x PP x DP, torch.distributed over gloo); 1 runs every role in this process.")
