"""Measuring a bundle on this machine:

- scenes.py   the seeded generated scenes (images, captions, questions) the reference models learn
              and are graded on (also `mmedge.scenes`, `python -m mmedge.scenes`);
- quality.py  `mmedge eval`: exact-match accuracy (VLMs), zero-shot accuracy and recall (CLIP);
- speed.py    `mmedge bench`: per-stage timings and peak memory.
"""
