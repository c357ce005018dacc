/* mmedge's chat page: ask a chat model served by `mmedge serve` about a photo, by typing or
   speaking; the answer streams in (GET /v1/models, POST /v1/chat/completions with stream: true)
   and can be read aloud by the browser's own speech synthesis. Plain JavaScript, nothing loaded
   from elsewhere. The whole conversation is kept here and sent with every question (the server
   keeps its KV cache, so a next turn only prefills what is new).

   Hooks for tests and scripts (stable):
     #model          the <select> of chat models; data-state = "loading" | "ready" |
                     "key-needed" (the server answered 401: #key-form is shown) | "error"
     #key-form       #api-key (password field) and its submit button; the key is kept in
                     sessionStorage and sent as Authorization: Bearer KEY on every API call
     #question       the question; Enter (or #send) sends it, Shift+Enter is a new line
     #photo          file input attaching a photo; #capture (capture="environment", phones) and
                     #camera-open (live preview, where getUserMedia is available) take one
     #answer         the latest answer, the page's one aria-live region; its textContent is the
                     answer exactly as streamed. data-state = "idle" | "waiting" | "streaming" |
                     "done" (finished, or stopped with #stop-answer) | "error" (then #error,
                     role="alert", says why in plain words)
     #history        the earlier turns, one li.turn each
     #composer[data-max-tokens]   the max_tokens every question is sent with
*/
"use strict";

(() => {
  const MAX_EDGE = 2048;        // photos with a longer edge are downscaled to it (JPEG 0.9)
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), error: $("error"), keyForm: $("key-form"), apiKey: $("api-key"),
    model: $("model"), readAloudLabel: $("read-aloud-label"), readAloud: $("read-aloud"),
    stopSpeaking: $("stop-speaking"), newConversation: $("new-conversation"),
    history: $("history"), current: $("current"), currentQuestion: $("current-question"),
    answer: $("answer"), note: $("answer-note"), composer: $("composer"), question: $("question"),
    attachment: $("attachment"), thumbnail: $("thumbnail"), removePhoto: $("remove-photo"),
    camera: $("camera"), video: $("camera-video"), shoot: $("camera-shoot"),
    cameraCancel: $("camera-cancel"), send: $("send"), stopAnswer: $("stop-answer"),
    speak: $("speak"), photo: $("photo"), capture: $("capture"), cameraOpen: $("camera-open"),
    attachGroup: $("attach-group"), captureGroup: $("capture-group"),
  };
  const maxTokens = parseInt(el.composer.dataset.maxTokens, 10) || undefined;

  let apiKey = sessionStorage.getItem("mmedge-api-key") || "";
  let models = [];              // chat models from /v1/models
  let messages = [];            // the conversation, as sent to the API
  let photo = null;             // the photo for the next question: {url: data URL, name}
  let answering = null;         // the AbortController of the answer being written
  let cameraStream = null;

  class PageError extends Error {}   // a message meant for the user as it is

  // ------------------------------------------------------------------------------ the server

  function api(path, options = {}) {
    const headers = Object.assign({}, options.headers);
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    return fetch(path, Object.assign({}, options, { headers }));
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON: fall through */ }
    return `The server answered ${response.status} ${response.statusText}.`.replace(" .", ".");
  }

  const unreachable = () => `The mmedge server at ${location.host} cannot be reached. Check that ` +
    "it is still running and that this device is on the same network.";

  function showError(message) { el.error.textContent = message; }
  function clearError() { el.error.textContent = ""; }

  // ------------------------------------------------------------------------------ models

  async function loadModels() {
    el.model.dataset.state = "loading";
    let response;
    try {
      response = await api("/v1/models");
    } catch (e) {
      return modelsFailed(unreachable());
    }
    if (response.status === 401) return askForKey(!!apiKey);
    if (!response.ok) return modelsFailed(await errorMessage(response));
    const all = (await response.json()).data || [];
    const about = (m) => m.mmedge || {};
    models = all.filter((m) => about(m).kind === "chat" && about(m).ready);
    const loading = all.filter((m) => !about(m).ready && !about(m).error);
    const previous = el.model.value || localStorage.getItem("mmedge-model");
    el.model.replaceChildren();
    for (const m of models) el.model.append(new Option(m.id, m.id));
    for (const m of loading) {
      const option = new Option(`${m.id} (loading…)`, m.id);
      option.disabled = true;
      el.model.append(option);
    }
    if (loading.length) setTimeout(loadModels, 2000);   // a bundle still loading: look again
    if (!models.length) {
      el.model.disabled = true;
      if (loading.length) {
        el.status.textContent = "The models are still loading…";
        return;
      }
      const others = all.map((m) => `${m.id} (${about(m).kind || "failed to load"})`).join(", ");
      return modelsFailed("This server has no chat model to answer questions" +
                          (others ? `; it serves only ${others}.` : "."));
    }
    if (models.some((m) => m.id === previous)) el.model.value = previous;
    el.model.disabled = false;
    el.model.dataset.state = "ready";
    el.status.textContent = models.length === 1 ? `Ready: ${models[0].id}.` :
      `Ready: ${models.length} models.`;
    modelChanged();
  }

  function modelsFailed(message) {
    el.model.dataset.state = "error";
    el.status.textContent = "No model is available.";
    showError(message);
  }

  function askForKey(rejected) {
    el.model.dataset.state = "key-needed";
    el.model.disabled = true;
    el.status.textContent = "This server needs an API key.";
    el.keyForm.hidden = false;
    if (rejected) showError("That API key was not accepted; check it and enter it again.");
    el.apiKey.focus();
  }

  function currentModel() { return models.find((m) => m.id === el.model.value); }

  function modelChanged() {
    const model = currentModel();
    if (!model) return;
    localStorage.setItem("mmedge-model", model.id);
    const images = model.mmedge.accepts_images !== false;
    el.attachGroup.hidden = !images;
    el.captureGroup.hidden = !images || liveCamera;
    el.cameraOpen.hidden = !images || !liveCamera;
    if (!images) { clearPhoto(); closeCamera(); }
  }

  // ------------------------------------------------------------------------------ asking

  async function send() {
    if (answering) return;   // one answer at a time; #stop-answer stops it
    const text = el.question.value.trim();
    const model = currentModel();
    if (!model) return showError("No model is ready yet.");
    if (!text && !photo) {
      showError("Type or speak a question first.");
      return el.question.focus();
    }
    clearError();
    const content = photo ? [{ type: "image_url", image_url: { url: photo.url } }] : [];
    if (text) content.push({ type: "text", text });
    const asked = { text, photo };
    const conversation = messages;   // replaced by "New conversation", which ends this answer
    messages.push({ role: "user", content: photo ? content : text });
    archiveCurrentTurn();
    showQuestion(asked);
    el.question.value = "";
    clearPhoto();

    answering = new AbortController();
    setAnswering(true);
    el.answer.textContent = "";
    el.answer.dataset.state = "waiting";
    el.answer.setAttribute("aria-busy", "true");   // announced once complete, not word by word
    el.note.textContent = "Thinking…";
    el.note.scrollIntoView({ block: "nearest" });
    speaker.start();
    let answer = "";
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: model.id, messages, stream: true, max_tokens: maxTokens }),
        signal: answering.signal,
      });
      if (response.status === 401) {
        askForKey(!!apiKey);
        throw new PageError("The server needs a valid API key: enter it above, then send again.");
      }
      if (!response.ok) throw new PageError(await errorMessage(response));
      el.note.textContent = "";
      el.answer.dataset.state = "streaming";
      const finish = await readStream(response, (piece) => {
        answer += piece;
        el.answer.append(piece);
        speaker.add(piece);
        el.note.scrollIntoView({ block: "nearest" });
      });
      if (finish === "length") el.note.textContent = "The answer was cut short (length limit).";
      finished(answer);
    } catch (e) {
      if (conversation !== messages) return;
      if (e.name === "AbortError") {
        el.note.textContent = "Stopped.";
        if (answer) return finished(answer);
      }
      messages.pop();   // the question had no answer: it is not part of the conversation
      if (!el.question.value && !photo) {   // give it back, to send again
        el.question.value = asked.text;
        if (asked.photo) showPhoto(asked.photo);
      }
      speaker.stop();
      el.answer.dataset.state = e.name === "AbortError" ? "done" : "error";
      if (e.name !== "AbortError") {
        el.note.textContent = "No answer.";
        showError(e instanceof PageError ? e.message :
                  e instanceof TypeError ? unreachable() : `Something went wrong: ${e.message}`);
      }
    } finally {
      el.answer.setAttribute("aria-busy", "false");
      answering = null;
      setAnswering(false);
    }
  }

  function finished(answer) {
    messages.push({ role: "assistant", content: answer });
    speaker.finish();
    el.answer.dataset.state = "done";
  }

  /* The server-sent events of a streamed answer: each `data: {chunk}` adds its delta's text;
     `data: {"error": ...}` is a failure mid-answer; `data: [DONE]` ends it. */
  async function readStream(response, onText) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", finish = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return finish;
        let chunk;
        try { chunk = JSON.parse(data); } catch (e) {
          throw new PageError("The server sent an answer this page cannot read.");
        }
        if (chunk.error) throw new PageError(chunk.error.message || "The model failed while answering.");
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    throw new PageError("The connection to the server closed before the answer was finished.");
  }

  function setAnswering(on) {
    // Send stays focusable (aria-disabled, not disabled), so focus is not lost while answering.
    el.send.setAttribute("aria-disabled", String(on));
    el.stopAnswer.hidden = !on;
    el.status.textContent = on ? "Answering…" : `Ready: ${el.model.value}.`;
  }

  function showQuestion({ text, photo }) {
    el.currentQuestion.replaceChildren();
    if (photo) {
      const img = document.createElement("img");
      img.className = "photo";
      img.src = photo.url;
      img.alt = "Your photo";
      el.currentQuestion.append(img);
    }
    if (text) {
      const p = document.createElement("p");
      p.className = "text";
      p.textContent = text;
      el.currentQuestion.append(p);
    }
    el.current.hidden = false;
  }

  /* The finished turn moves to #history as a copy without ids or live region, so #answer stays
     the one live region and nothing earlier is announced again. */
  function archiveCurrentTurn() {
    if (el.current.hidden) return;
    const item = document.createElement("li");
    item.className = "turn";
    for (const part of el.current.children) item.append(part.cloneNode(true));
    for (const node of item.querySelectorAll("[id]")) node.removeAttribute("id");
    for (const node of item.querySelectorAll("[aria-live]")) {
      node.removeAttribute("aria-live");
      node.removeAttribute("aria-busy");
      node.removeAttribute("data-state");
    }
    el.history.append(item);
  }

  function newConversation() {
    if (answering) answering.abort();
    speaker.stop();
    messages = [];
    el.history.replaceChildren();
    el.current.hidden = true;
    el.answer.textContent = "";
    el.answer.dataset.state = "idle";
    el.note.textContent = "";
    clearError();
    el.status.textContent = "New conversation.";
    el.question.focus();
  }

  // ------------------------------------------------------------------------------ photos

  // Phones: the file input with capture="environment" opens the camera app (works over plain
  // http too). Elsewhere, where getUserMedia exists (secure contexts only: localhost or https),
  // "Take photo" opens a live preview instead.
  const liveCamera = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia) &&
    !matchMedia("(pointer: coarse)").matches;

  async function attach(input) {
    const file = input.files && input.files[0];
    input.value = "";   // choosing the same file again is a change too
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) return showError(`${file.name} is not an image.`);
    clearError();
    try {
      showPhoto(await prepare(file));
    } catch (e) {
      showError(`The photo could not be read (${e.message || e}).`);
    }
  }

  /* A photo as a data URL: the file's own bytes unless its longest edge is over MAX_EDGE, then a
     downscaled JPEG. A format this browser cannot draw (HEIC, say) is sent as it is; the server
     says so if it cannot read it either. */
  async function prepare(file) {
    const image = await decode(file).catch(() => null);
    if (image && Math.max(image.naturalWidth, image.naturalHeight) > MAX_EDGE) {
      return { url: toJpeg(image, image.naturalWidth, image.naturalHeight), name: file.name };
    }
    const url = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    return { url, name: file.name };
  }

  function decode(file) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      const url = URL.createObjectURL(file);
      image.onload = () => { URL.revokeObjectURL(url); resolve(image); };
      image.onerror = () => { URL.revokeObjectURL(url); reject(new Error("not decodable")); };
      image.src = url;
    });
  }

  function toJpeg(source, width, height) {
    const scale = Math.min(1, MAX_EDGE / Math.max(width, height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    canvas.getContext("2d").drawImage(source, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.9);
  }

  function showPhoto(chosen) {
    photo = chosen;
    el.thumbnail.src = chosen.url;
    el.thumbnail.alt = `Attached photo: ${chosen.name}`;
    el.attachment.hidden = false;
  }

  function clearPhoto() {
    photo = null;
    el.thumbnail.removeAttribute("src");
    el.attachment.hidden = true;
  }

  async function openCamera() {
    clearError();
    try {
      cameraStream = await navigator.mediaDevices.getUserMedia(
        { video: { facingMode: "environment" }, audio: false });
    } catch (e) {
      return showError(e.name === "NotAllowedError" ? "The browser was not allowed to use the camera." :
                       e.name === "NotFoundError" ? "No camera was found on this device." :
                       `The camera could not be started (${e.name}).`);
    }
    el.video.srcObject = cameraStream;
    el.camera.hidden = false;
    el.shoot.focus();
  }

  function shoot() {
    const { videoWidth: width, videoHeight: height } = el.video;
    if (!width) return showError("The camera has no picture yet; try again in a moment.");
    showPhoto({ url: toJpeg(el.video, width, height), name: "camera photo" });
    closeCamera();
    el.question.focus();
  }

  function closeCamera() {
    if (cameraStream) cameraStream.getTracks().forEach((track) => track.stop());
    cameraStream = null;
    el.video.srcObject = null;
    if (!el.camera.hidden) {
      el.camera.hidden = true;
      if (!el.cameraOpen.hidden) el.cameraOpen.focus();
    }
  }

  // ------------------------------------------------------------------------------ voice

  /* Reading aloud, sentence by sentence as the answer streams: a sentence is spoken once it ends
     with . ! or ? followed by a space (so "3.5" waits), or with a new line; the rest at the end. */
  const canSpeak = "speechSynthesis" in window && "SpeechSynthesisUtterance" in window;
  const speaker = {
    pending: "", on: false,
    start() { this.pending = ""; this.on = canSpeak && el.readAloud.checked; },
    add(text) {
      if (!this.on) return;
      this.pending += text;
      let sentence;
      while ((sentence = /^[\s\S]*?(?:[.!?]+(?=\s)|\n)/.exec(this.pending))) {
        this.say(sentence[0]);
        this.pending = this.pending.slice(sentence[0].length);
      }
    },
    finish() { if (this.on) this.say(this.pending); this.pending = ""; this.on = false; },
    stop() { this.pending = ""; this.on = false; if (canSpeak) speechSynthesis.cancel(); },
    say(text) {
      if (!text.trim()) return;
      try { speechSynthesis.speak(new SpeechSynthesisUtterance(text.trim())); } catch (e) { /* no voice */ }
    },
  };

  /* Voice input. Chrome's recognizer sends the audio to an online speech service, so on an
     offline network it fails (a "network" error, reported below); type the question then. */
  const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
  let recognizer = null;

  function toggleListening() {
    if (recognizer) return recognizer.stop();
    clearError();
    recognizer = new Recognition();
    recognizer.lang = navigator.language || "en-US";
    recognizer.interimResults = true;
    const before = el.question.value ? el.question.value.replace(/\s*$/, " ") : "";
    recognizer.onresult = (event) => {
      el.question.value = before + Array.from(event.results, (r) => r[0].transcript).join("");
    };
    recognizer.onerror = (event) => {
      const explain = {
        "network": "Speech recognition needs the browser's online speech service, which cannot " +
                   "be reached from here; type the question instead.",
        "not-allowed": "The browser was not allowed to use the microphone.",
        "service-not-allowed": "This browser does not offer speech recognition here.",
        "no-speech": "No speech was heard; press Speak and try again.",
        "audio-capture": "No microphone was found.",
      };
      if (event.error !== "aborted") showError(explain[event.error] || `Speech recognition failed (${event.error}).`);
    };
    recognizer.onend = () => {
      recognizer = null;
      el.speak.textContent = "Speak";
      el.question.focus();
    };
    recognizer.start();
    el.speak.textContent = "Stop listening";
  }

  // ------------------------------------------------------------------------------ wiring

  el.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  el.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  el.stopAnswer.addEventListener("click", () => { if (answering) answering.abort(); el.question.focus(); });
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = el.apiKey.value.trim();
    sessionStorage.setItem("mmedge-api-key", apiKey);
    el.keyForm.hidden = true;
    clearError();
    loadModels().then(() => { if (el.model.dataset.state === "ready") el.question.focus(); });
  });
  el.model.addEventListener("change", modelChanged);
  el.newConversation.addEventListener("click", newConversation);
  el.photo.addEventListener("change", () => attach(el.photo));
  el.capture.addEventListener("change", () => attach(el.capture));
  el.removePhoto.addEventListener("click", () => { clearPhoto(); el.question.focus(); });
  el.cameraOpen.addEventListener("click", openCamera);
  el.shoot.addEventListener("click", shoot);
  el.cameraCancel.addEventListener("click", closeCamera);

  if (canSpeak) {
    el.readAloudLabel.hidden = false;
    el.stopSpeaking.hidden = false;
    el.readAloud.checked = localStorage.getItem("mmedge-read-aloud") !== "off";
    el.readAloud.addEventListener("change", () => {
      localStorage.setItem("mmedge-read-aloud", el.readAloud.checked ? "on" : "off");
      if (!el.readAloud.checked) speaker.stop();
    });
    el.stopSpeaking.addEventListener("click", () => speaker.stop());
  }
  if (Recognition) {
    el.speak.hidden = false;
    el.speak.addEventListener("click", toggleListening);
  }
  el.captureGroup.hidden = liveCamera;
  el.cameraOpen.hidden = !liveCamera;
  el.question.focus();
  loadModels();
})();
