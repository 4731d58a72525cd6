"""``noisefast bench``: the side-by-side measurements as an installed package (the command is `noisefast.cli.bench`).

One results schema for every subcommand (`schema`), one timing policy per device (`timing`), the machine and its
load recorded with every number (`machine`); the measurements themselves, one module each:

    kernels   fused ops vs the same math in eager torch; GB/s vs the device's copy bandwidth        (kernels.py)
    scoring   noisefast vs the diffusers users (per seed, batched, batched + torch.compile)          (scoring.py,
              on the user's model or a built-in random-weight SDXL architecture (models.py)           users.py,
              the GPU matrix: configurations × batch sizes within a time budget                       matrix.py)
    optimize  Algorithm 2's s/iteration and memory, checkpointed vs plain autograd                    (optimize.py)
    unet      UNet calls per backend, achieved TFLOP/s vs the device's measured matmul peak            (unet.py)
    serve     a closed-loop load generator against a running `noisefast serve` (or one it starts)    (serve.py)
    screen    rows/s of the screening job, in process and on Ray                                      (screen.py)
    compare   two result files side by side: ratios, what changed, regressions                       (compare.py)

Markdown tables are rendered from the JSON alone (`tables`), so a saved result can be rendered again or compared
without torch. Imports go one way: this package uses the engine (`noisefast.pipeline`, `noisefast.ops`, ...);
nothing in the engine imports it.
"""
