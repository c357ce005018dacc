"""The parity check that ends every export: the bundle, run by mmedge's own runtime, against the
torch model it came from, on the same prompt (and image).

Measured: the largest difference between the two models' logits at the prompt's last position,
and greedy agreement (how many of the first N greedy tokens are identical, stopping at the first
difference). An fp32 bundle must agree on every token or the export fails; quantized bundles only
record their figures, which `mmedge info` shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmedge.errors import ExportError

PARITY_PROMPT = "What is the capital of France? Answer in one sentence."
PARITY_IMAGE_PROMPT = "Describe this image."
PARITY_TOKENS = 16


def parity_image(height: int = 240, width: int = 320) -> np.ndarray:
    """A deterministic synthetic RGB frame (gradients and a square), uint8 HxWx3."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                      (x + y) * 255 // max(width + height - 2, 1)], axis=-1).astype(np.uint8)
    image[height // 4: height // 2, width // 4: width // 2] = (200, 30, 30)
    return image


def reference_inputs(runtime, ids: list[int], images: list[Any]) -> dict[str, Any]:
    """The torch model's inputs for a prompt: its ids, and the pixels of its images as the
    runtime preprocessed them (one [3, H, W] per image: LLaVA-1.5's layout). A family whose
    model takes pixels otherwise gives its recipe a `reference_inputs` of its own."""
    import torch

    inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
    if images:
        inputs["pixel_values"] = torch.from_numpy(runtime.preprocess(images))
    return inputs


def check_parity(bundle_dir, reference, precision: str, with_image: bool,
                 tokens: int = PARITY_TOKENS, make_inputs=reference_inputs) -> dict[str, Any]:
    import torch

    import mmedge

    runtime = mmedge.load(bundle_dir, device="cpu", verify=False)
    images = [parity_image()] if with_image else []
    prompt = PARITY_IMAGE_PROMPT if with_image else PARITY_PROMPT
    messages = runtime.build_messages(prompt, len(images))
    ids = runtime.prompt_ids(messages, images)

    inputs = make_inputs(runtime, ids, images)
    with torch.no_grad():
        torch_logits = reference(**inputs).logits[0, -1].float().numpy()
        eos = runtime.tokenizer.eos_token_ids
        generated = reference.generate(**inputs, max_new_tokens=tokens, do_sample=False,
                                       eos_token_id=eos, pad_token_id=eos[0])
    torch_tokens = [int(t) for t in generated[0, len(ids):] if int(t) not in eos]

    answer = runtime.generate(messages=messages, images=images, max_new_tokens=tokens)
    ours = runtime.last_stats.token_ids
    our_logits = runtime.prompt_logits(ids, images)

    agree = 0
    for a, b in zip(torch_tokens, ours):
        if a != b:
            break
        agree += 1
    compared = max(len(torch_tokens), len(ours))
    result = {
        "prompt": prompt, "with_image": with_image,
        "max_logit_diff": float(np.abs(torch_logits - our_logits).max()),
        "logit_scale": float(np.abs(torch_logits).max()),
        "greedy_tokens_compared": compared,
        "greedy_tokens_agreeing": agree,
        "same_first_token": bool(torch_tokens[:1] == ours[:1]),
        "torch_answer": runtime.tokenizer.decode(torch_tokens),
        "bundle_answer": answer,
    }
    if precision == "fp32" and (agree != compared):
        raise ExportError(
            f"Parity check failed: the fp32 bundle's greedy tokens differ from torch's after "
            f"{agree} of {compared} tokens (max logit difference {result['max_logit_diff']:.3g}).\n"
            f"  torch : {result['torch_answer']!r}\n  bundle: {answer!r}\n"
            f"This is a bug in mmedge's export of this model; please report it.")
    return result
