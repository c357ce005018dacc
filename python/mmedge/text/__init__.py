"""The text side of the runtime, each piece matching what transformers 5.x does with the same files:

- `Tokenizer`             (tokenizer.py)      encode/decode a bundle's tokenizer.json;
- `ChatTemplate`          (chat_template.py)  the chat template, rendered in Jinja's sandbox;
- `streaming_detokenizer` (detokenizer.py)    token ids in one at a time, final text out
                                              (tokenizers' DecodeStream where it does the job);
- `StopStrings`           (stop_strings.py)   cut streamed text before the first stop string.

Only `tokenizers`, `jinja2` and the standard library; sampling and the generation loop live in
`mmedge.generation`.
"""

from mmedge.text.chat_template import ChatTemplate
from mmedge.text.detokenizer import DecodeStreamDetokenizer, StreamingDetokenizer, streaming_detokenizer
from mmedge.text.stop_strings import StopStrings
from mmedge.text.tokenizer import Tokenizer

__all__ = ["Tokenizer", "ChatTemplate", "StreamingDetokenizer", "DecodeStreamDetokenizer",
           "streaming_detokenizer", "StopStrings"]
