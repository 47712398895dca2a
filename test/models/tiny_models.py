"""Tiny model configurations shared by the model tests (kept small so the suite stays fast)."""

NUM_CLASSES = 5
#: Small but complete architectures: every layer exists, just narrow.
TINY = {
    "mobilenetv2": {"backbone": "mobilenetv2", "width_mult": 0.25, "decoder_channels": 16},
    "resnet18": {"backbone": "resnet18", "decoder_channels": 16},
}
