"""Worker handles: the same worker classes in-process (embedded default) or as Ray actors.

`Handle.call(method, *args)` runs a method and returns its result either way, so the training loop
does not know where a worker lives. No placement decision is made here: the resources each actor
asks Ray for come from the plan's devices (see `actor_resources`).
"""

from __future__ import annotations

from typing import Any, Optional


class LocalHandle:
    """A worker object in this process."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.remote = False

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.obj, method)(*args, **kwargs)

    def shutdown(self) -> None:
        close = getattr(self.obj, "close", None)
        if callable(close):
            close()


class RayHandle:
    """A worker running as a Ray actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.remote = True

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        return ray.get(getattr(self.actor, method).remote(*args, **kwargs))

    def shutdown(self) -> None:
        import ray

        try:
            if hasattr(self.actor, "close"):
                ray.get(self.actor.close.remote())
        except Exception:  # the actor may not have a close method or may be gone
            pass
        ray.kill(self.actor)


def uses_ray(plan: Any) -> bool:
    """Ray when the plan names a cluster address or spans more than one accelerator device."""
    return bool(plan.spec.cluster.ray_address) or (plan.accelerator == "gpu" and len(plan.devices) > 1)


def actor_resources(plan: Any, role: str) -> dict[str, float]:
    """Ray resources for one actor of ``role``, read off the plan.

    GPU plans: a role that shares a device with k roles asks for 1/k of it (colocated); CPU plans
    and the reward role ask for no GPU. CPU actors ask for no CPU slot so that a small machine can
    host every role (torch threads are set from ``cluster.cpu_threads``).
    """
    if plan.accelerator != "gpu" or role == "reward":
        return {"num_cpus": 0, "num_gpus": 0}
    for d in plan.devices:
        if role in d.roles:
            return {"num_cpus": 0, "num_gpus": 1.0 / len(d.roles)}
    return {"num_cpus": 0, "num_gpus": 0}


def init_ray(address: Optional[str]) -> None:
    """Connect to ``address`` (``auto`` or ``ray://...``) or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(include_dashboard=False, num_cpus=None)
    ray.init(**kwargs)


def spawn(cls: type, args: tuple, *, plan: Any, role: str, remote: bool) -> Any:
    """A handle on a new ``cls(*args)`` worker, local or as a Ray actor."""
    if not remote:
        return LocalHandle(cls(*args))
    import ray

    res = actor_resources(plan, role)
    actor = ray.remote(cls).options(name=None, max_concurrency=1, **res).remote(*args)
    return RayHandle(actor)
