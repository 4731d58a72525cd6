"""Large-scale seed screening: many prompts × many seeds → a resumable Parquet dataset (``noisefast screen``).

    import noisefast
    res = noisefast.screen("prompts.txt", seeds=range(1000), out="runs/fox")   # the module is callable
    df = noisefast.screen.load_scores("runs/fox")        # pandas: one row per (prompt, seed)
    stats = noisefast.screen.seed_stats("runs/fox")      # per seed across prompts: mean stability, mean rank
    noisefast.screen.run_status("runs/fox")["complete"]  # every planned shard there and verified?

Modules: `prompts_io` (prompt files), `shards` (the exactly-once protocol), `integrity` (sealed shards, the one
verified reader), `manifest` (what a run pins, its plan), `runner` (scoring a shard on
the shared row packing, in process), `ray_runner` (the same shards on Ray), `summary` (reading back),
`job` (the driver). pyarrow and pandas (the ``[screen]`` extra) are imported only when used.
"""

import sys
import types

from noisefast.screen.job import DEFAULT_SHARD_SIZE, ScreenInterrupted, ScreenResult, screen
from noisefast.screen.prompts_io import PromptItem, prompt_id, read_prompt_file
from noisefast.screen.summary import load_scores, run_status, seed_stats


class _CallableModule(types.ModuleType):
    """``noisefast.screen(...)`` runs `screen`; ``noisefast.screen.load_scores`` etc. stay module attributes."""

    def __call__(self, *args, **kwargs):
        return screen(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["DEFAULT_SHARD_SIZE", "PromptItem", "ScreenInterrupted", "ScreenResult", "load_scores", "prompt_id",
           "read_prompt_file", "run_status", "screen", "seed_stats"]
