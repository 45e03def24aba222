"""Rehearsal of a GPU plan on a CPU machine: the real runtime, stand-in backends with a memory ledger
(`engine.rehearse.runner.rehearse`, ``engine rehearse``)."""
