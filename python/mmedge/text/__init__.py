"""The text side of the runtime, each piece matching what transformers 5.x does with the same files:

- `Tokenizer`             (tokenizer.py)      encode/decode a bundle's tokenizer.json;
- `ChatTemplate`          (chat_template.py)  the chat template, rendered in Jinja's sandbox;
- `StreamingDetokenizer`  (detokenizer.py)    token ids in one at a time, final text out;
- `StopStrings`           (stop_strings.py)   cut streamed text before the first stop string.

Only `tokenizers`, `jinja2` and the standard library; sampling and the generation loop live in
`mmedge.generation`.
"""

from mmedge.text.chat_template import ChatTemplate
from mmedge.text.detokenizer import StreamingDetokenizer
from mmedge.text.stop_strings import StopStrings
from mmedge.text.tokenizer import Tokenizer

__all__ = ["Tokenizer", "ChatTemplate", "StreamingDetokenizer", "StopStrings"]
