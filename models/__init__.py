"""mmedge.models: builders of reference Hugging Face checkpoints (seeded random weights) for tests,
benchmarks and the README demo. Needs torch and transformers; the runtime never imports it.
"""
