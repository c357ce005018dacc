"""Generation: a (vision-)language bundle answering prompts.

- model.py            `Model`: prompt building (chat template, image placeholders), image features
                      written into the embeddings, the public `generate` API;
- decoder_session.py  the decoder's ONNX Runtime session and its KV caches (IO binding);
- loop.py             the decode loop: prefill, one step per token, stop rules, stats;
- sampling.py         next-token choice (greedy, temperature, top-k/p, repetition penalty).
"""

from mmedge.generation.model import Model

__all__ = ["Model"]
