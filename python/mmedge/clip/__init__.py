"""CLIP/SigLIP bundles: image and text embeddings, zero-shot classification, image search.

- model.py          `ClipModel` (what `mmedge.load` returns for a CLIP/SigLIP bundle);
- index.py          `ImageIndex`: embeddings of image files in one SQLite file, exact cosine search;
- contact_sheet.py  a PNG of a search's query and hits.
"""

from mmedge.clip.model import ClipModel, UnknownWordsWarning

__all__ = ["ClipModel", "UnknownWordsWarning"]
