"""`mmedge serve` driven by the real OpenAI client (and raw HTTP where the client hides the wire)
against real servers on a loopback port: answers equal the Python API's on the same input,
streams reassemble to them, embeddings equal ClipModel's, and every bad request gets OpenAI's
error shape with the right status and a message that says what to do."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import mmedge
from mmedge.cli import build_parser
from mmedge.export import export_model
from mmedge.models.tiny import build_tiny_llm

from _serving import Server, data_url, free_port, scene_png, serving

QUESTION = "What color is the star?"


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def image_turn(png: bytes, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png)}},
                                        {"type": "text", "text": text}]}


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ------------------------------------------------------------------------------------ answers

def test_chat_with_an_image_equals_the_python_api(server, loaded):
    png = scene_png(0)
    reply = client(server).chat.completions.create(model="tiny-vlm", messages=[image_turn(png, QUESTION)],
                                                   max_tokens=24)
    model = loaded["tiny-vlm"]
    expected = model.generate(QUESTION, images=[png], max_new_tokens=24)
    choice = reply.choices[0]
    assert choice.message.content == expected and expected.strip()
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens == model.last_stats.prompt_tokens
    assert reply.usage.completion_tokens == model.last_stats.new_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == "tiny-vlm" and reply.id.startswith("chatcmpl-")
    assert reply.system_fingerprint.startswith(f"mmedge-{mmedge.__version__}-")


def test_the_bare_string_image_url_form_and_text_parts_work(server, loaded):
    png = scene_png(1)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": data_url(png)},
                                             {"type": "text", "text": "What does the sign say?"}]}]
    reply = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                       json={"model": "tiny-vlm", "messages": messages, "max_tokens": 12}).json()
    expected = loaded["tiny-vlm"].generate("What does the sign say?", images=[png], max_new_tokens=12)
    assert reply["choices"][0]["message"]["content"] == expected


def test_a_stream_reassembles_to_the_same_answer_with_usage_last(server, loaded):
    png = scene_png(2)
    stream = client(server).chat.completions.create(
        model="tiny-vlm", messages=[image_turn(png, "Describe the image.")], max_tokens=40, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == loaded["tiny-vlm"].generate("Describe the image.", images=[png], max_new_tokens=40)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3   # really streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 3
    assert all(c.usage is None for c in chunks[:-1])


def test_the_wire_format_of_a_stream_ends_with_done(server):
    body = {"model": "tiny-vlm", "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 6, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] is not None


def test_sampling_options_pass_through_and_a_seed_reproduces(server, loaded):
    options = dict(max_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    ask = [{"role": "user", "content": "Tell me a story about a robot."}]
    a = client(server).chat.completions.create(model="tiny-vlm", messages=ask, **options)
    b = client(server).chat.completions.create(model="tiny-vlm", messages=ask, **options)
    assert a.choices[0].message.content == b.choices[0].message.content
    expected = loaded["tiny-vlm"].generate(messages=ask, max_new_tokens=16, temperature=0.9,
                                           top_p=0.9, seed=7)
    assert a.choices[0].message.content == expected


def test_a_stop_string_ends_the_answer_with_finish_reason_stop(server, loaded):
    png = scene_png(0)
    full = loaded["tiny-vlm"].generate("Describe the image.", images=[png], max_new_tokens=40)
    word = full.split()[2]
    reply = client(server).chat.completions.create(
        model="tiny-vlm", messages=[image_turn(png, "Describe the image.")], max_tokens=40, stop=[word])
    assert reply.choices[0].message.content == full[:full.index(word)]
    assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_ends_with_length_and_a_huge_one_is_clamped_to_the_context(server, loaded):
    ask = [{"role": "user", "content": "Count from one to one hundred."}]
    short = client(server).chat.completions.create(model="tiny-vlm", messages=ask, max_tokens=3,
                                                   extra_body={"ignore_eos": True})
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert "max_tokens_clamped_to" not in short.model_extra["mmedge"]
    huge = client(server).chat.completions.create(model="tiny-vlm", messages=ask,
                                                  max_completion_tokens=10**9)
    extra = huge.model_extra["mmedge"]
    assert extra["max_tokens_clamped_to"] == extra["context_length"] - huge.usage.prompt_tokens
    assert huge.choices[0].message.content == loaded["tiny-vlm"].generate(messages=ask, max_new_tokens=10**6)


def test_a_next_turn_reuses_the_cache_and_the_image_features(loaded):
    png = scene_png(3)
    with serving(loaded, parallel=1) as server:
        first = [image_turn(png, QUESTION)]
        one = client(server).chat.completions.create(model="tiny-vlm", messages=first, max_tokens=12)
        turns = first + [{"role": "assistant", "content": one.choices[0].message.content},
                         {"role": "user", "content": "And where is it?"}]
        two = client(server).chat.completions.create(model="tiny-vlm", messages=turns, max_tokens=12)
        assert two.model_extra["mmedge"]["reused_prompt_tokens"] >= one.usage.prompt_tokens - 1
        # The same image in a new conversation (a system prompt first, so the KV cache cannot hold
        # it): its features come from the cache, by content.
        again = client(server).chat.completions.create(model="tiny-vlm", max_tokens=8, messages=[
            {"role": "system", "content": "Answer in one word."}, image_turn(png, "What shape is there?")])
        assert again.model_extra["mmedge"]["cached_images"] == 1
        assert metric(server, "mmedge_reused_prompt_tokens_total", model="tiny-vlm") > 0
    fresh = mmedge.load(loaded["tiny-vlm"].bundle.root, device="cpu")
    as_mmedge = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}] + turns[1:]
    assert two.choices[0].message.content == fresh.generate(messages=as_mmedge, images=[png],
                                                            max_new_tokens=12, reuse=False)


# --------------------------------------------------------------------------------- embeddings

def test_embeddings_equal_the_python_api_for_texts_and_images(server, loaded):
    png = scene_png(4)
    clip = loaded["tiny-clip"]
    texts = ["a red star", "a blue circle"]
    got = client(server).embeddings.create(model="tiny-clip", input=texts)   # base64, the client's default
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    np.testing.assert_array_equal(vectors, clip.embed_texts(texts))
    assert [d.index for d in got.data] == [0, 1] and got.usage.prompt_tokens > 0

    mixed = httpx.post(server.url + "/v1/embeddings", timeout=60, json={
        "model": "tiny-clip", "encoding_format": "float",
        "input": ["a red star", {"image": data_url(png)},
                  {"type": "image_url", "image_url": {"url": data_url(png)}}, {"text": "a square"}]}).json()
    rows = np.array([d["embedding"] for d in mixed["data"]], dtype=np.float32)
    np.testing.assert_array_equal(rows[[0, 3]], clip.embed_texts(["a red star", "a square"]))
    np.testing.assert_array_equal(rows[1], clip.embed_images([png])[0])
    np.testing.assert_array_equal(rows[1], rows[2])
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)

    one = client(server).embeddings.create(model="tiny-clip", input="a red star", encoding_format="float")
    np.testing.assert_array_equal(np.float32(one.data[0].embedding), clip.embed_texts(["a red star"])[0])


def test_models_and_health(server):
    listed = {m.id: m for m in client(server).models.list()}
    assert set(listed) == {"tiny-vlm", "tiny-clip"}
    assert listed["tiny-vlm"].model_extra["mmedge"]["kind"] == "chat"
    assert listed["tiny-clip"].model_extra["mmedge"]["kind"] == "embeddings"
    assert listed["tiny-vlm"].model_extra["mmedge"]["accepts_images"] is True
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_metrics_are_prometheus_text_with_the_figures(server):
    client(server).chat.completions.create(model="tiny-vlm", max_tokens=4,
                                           messages=[{"role": "user", "content": "Hi"}])
    names = {f.name for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert {"mmedge_requests", "mmedge_queue_length", "mmedge_time_to_first_token_seconds",
            "mmedge_generated_tokens", "mmedge_decode_tokens_per_second"} <= names
    assert metric(server, "mmedge_requests_total", model="tiny-vlm", status="200") >= 1
    assert metric(server, "mmedge_time_to_first_token_seconds_count", model="tiny-vlm") >= 1
    assert metric(server, "mmedge_queue_length", model="tiny-vlm") == 0


# ----------------------------------------------------------------------------- bad requests

def _error(server, body, path="/v1/chat/completions", content=None, headers=None):
    r = httpx.post(server.url + path, json=None if content is not None else body, content=content,
                   headers=headers, timeout=60)
    payload = r.json()
    assert set(payload) == {"error"} and {"message", "type", "param", "code"} <= set(payload["error"])
    assert "Traceback" not in r.text
    return r.status_code, payload["error"]


def _chat(content, role="user", **extra):
    return {"model": "tiny-vlm", "messages": [{"role": role, "content": content}], **extra}


@pytest.mark.parametrize("body, status, words", [
    (_chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not base64@@@"}}]),
     400, "not valid base64"),
    (_chat([{"type": "image_url", "image_url": {"url": data_url(b"hello, I am text")}}]),
     400, "image"),
    (_chat([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}]),
     400, "not an image"),
    (_chat([{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]),
     400, "not fetched"),
    (_chat([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]), 400, "Local file paths are off"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}, 404, "does not exist"),
    ({"model": "tiny-clip", "messages": [{"role": "user", "content": "Hi"}]}, 400, "embedding"),
    (_chat("Hi", n=2), 400, "n=2"),
    (_chat("Hi", logprobs=True), 400, "logprobs"),
    (_chat("Hi", temperature=5), 400, "temperature"),
    (_chat("Hi", max_tokens=0), 400, "max_tokens"),
    (_chat("Hi", stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (_chat("You are terse.", role="system"), 400, "no user message"),
    ({"model": "tiny-vlm", "messages": [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url(scene_png(0))}}]},
        {"role": "user", "content": "Hi"}]}, 400, "images go in user messages"),
    (_chat("Hi", stream=False, stream_options={"include_usage": True}), 400, "stream_options"),
    ({"model": "tiny-vlm", "messages": []}, 400, "non-empty list"),
    ({"model": "tiny-vlm", "messages": [{"role": "tool", "content": "42"}]}, 400, "tool"),
    ({"model": "tiny-vlm", "messages": "Hi"}, 400, "messages"),
    ({"model": "tiny-clip", "input": [[1, 2, 3]]}, 400, "token ids"),
    ({"model": "tiny-vlm", "input": "a red star"}, 400, "generative"),
    ({"model": "tiny-clip", "input": []}, 400, "input"),
])
def test_bad_requests_get_the_right_status_and_message(server, body, status, words):
    path = "/v1/embeddings" if "input" in body else "/v1/chat/completions"
    got_status, error = _error(server, body, path)
    assert got_status == status and words in error["message"], error


def test_malformed_json_and_a_prompt_too_long_for_the_context(server, loaded):
    status, error = _error(server, None, content=b'{"model": "tiny-vlm", "messages": [',
                           headers={"content-type": "application/json"})
    assert status == 400 and error["code"] == "invalid_json"
    too_long = "word " * loaded["tiny-vlm"].context_length
    status, error = _error(server, _chat(too_long))
    assert status == 400 and error["code"] == "context_length_exceeded" and "shorten" in error["message"]
    # An unknown endpoint and a wrong method: OpenAI's shape too.
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and "No such endpoint" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405


def test_the_client_raises_its_typed_errors(server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client(server).chat.completions.create(model="tiny-vlm", n=2,
                                               messages=[{"role": "user", "content": "Hi"}])


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-text")
    export_model(str(build_tiny_llm(root / "hf", seed=1)), root / "llm", precision="fp32", progress=False)
    return mmedge.load(root / "llm", device="cpu")


def test_an_image_sent_to_a_text_only_model_is_refused(text_only):
    with serving({"llm": text_only}) as server:
        status, error = _error(server, {"model": "llm", "messages": [image_turn(scene_png(0), "What is it?")]})
        assert status == 400 and "text-only" in error["message"]
        listed = client(server).models.list().data[0]
        assert listed.model_extra["mmedge"]["accepts_images"] is False
        # Without `model`, the only chat model is meant.
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["model"] == "llm"


def test_allowed_paths_only(loaded, tmp_path):
    inside, outside = tmp_path / "photos", tmp_path / "private"
    inside.mkdir(), outside.mkdir()
    (inside / "scene.png").write_bytes(scene_png(0))
    (outside / "scene.png").write_bytes(scene_png(0))
    (inside / "link.png").symlink_to(outside / "scene.png")
    with serving(loaded, allow_paths=[inside]) as server:
        reply = client(server).chat.completions.create(model="tiny-vlm", max_tokens=12, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{inside}/scene.png"}},
                                         {"type": "text", "text": QUESTION}]}])
        assert reply.choices[0].message.content == loaded["tiny-vlm"].generate(
            QUESTION, images=[scene_png(0)], max_new_tokens=12)
        for path in (outside / "scene.png", inside / "link.png", inside / ".." / "private" / "scene.png"):
            status, error = _error(server, _chat([{"type": "image_url", "image_url": {"url": str(path)}}]))
            assert status == 403 and "outside the folders" in error["message"]


# --------------------------------------------------------------------------------- security

def test_an_api_key_is_required_where_set(loaded, monkeypatch):
    with serving(loaded, api_key="s3cret") as server:
        for key, words in ((None, "Missing API key"), ("wrong", "Invalid API key")):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics")):
                r = httpx.request(method, server.url + path, headers=headers, json={})
                assert r.status_code == 401 and words in r.json()["error"]["message"], (path, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").models.list()
        assert [m.id for m in client(server, "s3cret").models.list()] == ["tiny-vlm", "tiny-clip"]
        assert httpx.get(server.url + "/health").status_code == 200   # open: for load balancers
        assert httpx.get(server.url + "/").status_code == 200        # the page asks for the key


def test_cors_is_off_unless_an_origin_is_given(loaded, server):
    origin = {"Origin": "http://phone.local", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server.url + "/v1/chat/completions", headers=origin)
    assert "access-control-allow-origin" not in r.headers
    with serving(loaded, cors=["http://phone.local"], api_key="k") as other:
        r = httpx.options(other.url + "/v1/chat/completions",
                          headers={**origin, "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://phone.local"
        r = httpx.get(other.url + "/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_a_body_over_the_limit_is_refused(loaded):
    with serving(loaded, max_body_bytes=4096) as server:
        status, error = _error(server, _chat([{"type": "image_url", "image_url": {"url": data_url(scene_png(0))}},
                                              {"type": "text", "text": QUESTION}]))
        assert status == 413 and "larger than" in error["message"]


def test_the_cli_binds_to_loopback_by_default():
    parser, _ = build_parser()
    args = parser.parse_args(["serve", "bundle/"])
    assert (args.host, args.port, args.parallel, args.api_key, args.cors) == ("127.0.0.1", 8080, 1, None, [])


@pytest.mark.parametrize("argv, words", [
    (["--port", "70000"], "a port is a number"), (["--parallel", "0"], "at least 1"),
    (["--timeout", "0"], "above 0"), (["--allow-path", "/no/such/folder"], "no such folder")])
def test_the_cli_refuses_bad_options_before_loading(argv, words, capsys):
    from mmedge.cli import main

    assert main(["serve", "bundle/", *argv]) == 2
    assert words in capsys.readouterr().err


# ------------------------------------------------------------------- slots, queue, time limits

LONG = dict(max_tokens=4000, extra_body={"ignore_eos": True})


def test_a_client_that_disconnects_frees_its_slot(loaded):
    with serving(loaded, parallel=1, queue_size=4) as server:
        stream = client(server).chat.completions.create(
            model="tiny-vlm", messages=[{"role": "user", "content": "Tell me everything."}], stream=True, **LONG)
        for _, chunk in zip(range(3), stream):
            pass
        stream.close()     # the client goes away mid-answer
        started = time.monotonic()
        reply = client(server).chat.completions.create(model="tiny-vlm", max_tokens=4,
                                                       messages=[{"role": "user", "content": "Hi"}])
        # 4000 tokens would take a minute: the slot was given back within moments.
        assert time.monotonic() - started < 20 and reply.choices[0].message.content
        assert metric(server, "mmedge_cancelled_generations_total", model="tiny-vlm", reason="client") == 1
        assert metric(server, "mmedge_running_requests", model="tiny-vlm") == 0
        assert loaded["tiny-vlm"].caches.in_use == 0


def test_a_full_queue_answers_429_with_retry_after(loaded):
    with serving(loaded, parallel=1, queue_size=0) as server:
        stream = client(server).chat.completions.create(
            model="tiny-vlm", messages=[{"role": "user", "content": "Tell me everything."}], stream=True, **LONG)
        next(iter(stream))
        try:
            r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                           json={"model": "tiny-vlm", "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
            assert metric(server, "mmedge_rejected_requests_total", model="tiny-vlm") == 1
        finally:
            stream.close()


def test_the_time_limit_stops_a_long_answer(loaded):
    with serving(loaded, timeout=1.5) as server:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            client(server).chat.completions.create(
                model="tiny-vlm", messages=[{"role": "user", "content": "Tell me everything."}], **LONG)
        assert caught.value.status_code == 504 and "time limit" in caught.value.message
        assert time.monotonic() - started < 15
        body = {"model": "tiny-vlm", "messages": [{"role": "user", "content": "Tell me everything."}],
                "stream": True, "max_tokens": 4000, "ignore_eos": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            events = [line for line in r.iter_lines() if line]
        assert "time limit" in json.loads(events[-2][6:])["error"]["message"]
        assert events[-1] == "data: [DONE]"
        assert metric(server, "mmedge_cancelled_generations_total", model="tiny-vlm", reason="timeout") == 2


def test_parallel_requests_each_get_their_own_answer(server, loaded):
    pngs = [scene_png(k) for k in range(4)]
    answers = {}

    def ask(k):
        answers[k] = client(server).chat.completions.create(
            model="tiny-vlm", messages=[image_turn(pngs[k], "Describe the image.")], max_tokens=32
        ).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model = loaded["tiny-vlm"]
    assert answers == {k: model.generate("Describe the image.", images=[pngs[k]], max_new_tokens=32)
                       for k in range(4)}


def test_a_model_still_loading_answers_503_and_health_says_so(bundles):
    gate = threading.Event()

    def slow_load(path):
        gate.wait(60)
        return mmedge.load(path, device="cpu")

    from mmedge.serve.asgi import create_app

    server = Server(create_app({"tiny-clip": bundles["tiny-clip"]}, load=slow_load)).start(ready=False)
    try:
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and health.json() == {"status": "loading",
                                                               "models": {"tiny-clip": "loading"}}
        r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny-clip", "input": "a star"})
        assert r.status_code == 503 and "still loading" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "5"
        assert client(server).models.list().data[0].model_extra["mmedge"]["ready"] is False
        gate.set()
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.post(server.url + "/v1/embeddings",
                          json={"model": "tiny-clip", "input": "a star"}).status_code == 200
    finally:
        gate.set()
        server.stop()


# ------------------------------------------------------------------------------------- the CLI

def test_the_cli_serves_and_refuses_a_missing_bundle(bundles, tmp_path):
    missing = subprocess.run([sys.executable, "-m", "mmedge", "serve", str(tmp_path / "nothing"),
                              "--port", "0"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "error:" in missing.stderr and "nothing" in missing.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("w")   # not a pipe: nobody reads it while the server runs
    proc = subprocess.Popen([sys.executable, "-m", "mmedge", "serve", f"clip={bundles['tiny-clip']}",
                             "--port", str(port), "--api-key", "k"], stderr=log)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        got = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k").embeddings.create(
            model="clip", input="a red star")
        assert len(got.data[0].embedding) == mmedge.load(bundles["tiny-clip"]).embed_dim
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode in (0, -15), (tmp_path / "serve.log").read_text()


def test_base64_embeddings_decode_to_float32(server, loaded):
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny-clip", "input": ["a star"],
                                                       "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(vector, loaded["tiny-clip"].embed_texts(["a star"])[0])
