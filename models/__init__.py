"""mmedge.models: the reference models trained here on generated scenes (`reference`, `train_tiny_clip`,
`train_tiny_vlm`, committed weights in weights/) and builders of tiny seeded random checkpoints for
tests and benchmarks (`tiny`). Needs torch and transformers; the runtime never imports it.
"""
