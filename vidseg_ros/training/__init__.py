"""Training library behind ``vidseg train`` and ``vidseg eval``: bag datasets, stage losses, the loop, DDP.

Modules: :mod:`.config` (options and defaults), :mod:`.data` (frames, flows and clip sampling),
:mod:`.losses`, :mod:`.objectives` (what each stage trains), :mod:`.loop` (optimiser, schedule, resume,
checkpoint), :mod:`.distributed` (torchrun/DDP), :mod:`.evaluate` (online evaluation through ``Stream``).
"""
