// dubflow review page: the index of a run's pairs and, per pair, the original and the dub under one
// transport. Self-contained: the run's data comes from review-data.js, media paths are relative,
// verdicts are kept in localStorage and exported as a review file (`dubflow retake` reads it).
"use strict";
(() => {
  const data = window.DUBFLOW_REVIEW;
  const $ = (id) => document.getElementById(id);
  const storeKey = `dubflow-review:${data.run_id}`;
  let verdicts = loadVerdicts();
  let player = null;

  function loadVerdicts() {
    try {
      return JSON.parse(localStorage.getItem(storeKey)) || {};
    } catch (error) {
      return {};
    }
  }

  function pairKey(pair) {
    return `${pair.shot_id}/${pair.language}/${pair.take}`;
  }

  function saveVerdicts() {
    localStorage.setItem(storeKey, JSON.stringify(verdicts));
    renderCount();
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // ---- index --------------------------------------------------------------------------------

  function qcVerdict(pair) {
    if (pair.status !== "delivered") return { text: `not delivered: ${pair.reason}`, className: "fail" };
    const failed = pair.qc.checks.filter((check) => !check.passed);
    if (failed.length) return { text: `${failed.length} failed: ${failed.map((c) => c.name).join(", ")}`, className: "fail" };
    return { text: `passed (${pair.qc.checks.length} checks)`, className: "pass" };
  }

  function loudness(pair) {
    const check = pair.qc && pair.qc.checks.find((c) => c.name.startsWith("loudness"));
    return check ? check.measured : "";
  }

  function severity(pair) {
    if (pair.status !== "delivered") return 0;
    return pair.qc.passed ? 2 : 1;
  }

  function renderIndex() {
    const body = document.querySelector("#pairs tbody");
    body.replaceChildren();
    const ordered = data.pairs.map((pair, order) => ({ pair, order }))
      .sort((a, b) => severity(a.pair) - severity(b.pair) || a.order - b.order);
    for (const { pair } of ordered) {
      const row = element("tr", null, "pair");
      row.dataset.pair = `${pair.shot_id}/${pair.language}`;
      const thumb = element("td");
      if (pair.thumbnail) thumb.append(Object.assign(document.createElement("img"), { src: pair.thumbnail, alt: "" }));
      const qc = qcVerdict(pair);
      const verdict = verdicts[pairKey(pair)];
      row.append(thumb, element("td", pair.shot_id), element("td", pair.language),
        element("td", takeText(pair)), element("td", pair.status, pair.status === "delivered" ? "" : "fail"),
        element("td", qc.text, qc.className), element("td", loudness(pair)), element("td", pair.script),
        element("td", verdict ? verdict.verdict + (verdict.note ? `: ${verdict.note}` : "") : "",
          verdict ? verdict.verdict : ""));
      if (pair.status === "delivered") {
        row.addEventListener("click", () => { location.hash = `#pair/${pair.shot_id}/${pair.language}`; });
      }
      body.append(row);
    }
  }

  function takeText(pair) {
    const rejected = pair.history.filter((take) => take.take < pair.take && take.verdict === "rejected");
    return rejected.length ? `${pair.take} (${rejected.length} rejected before)` : String(pair.take);
  }

  function renderCount() {
    const reviewed = data.pairs.filter((pair) => verdicts[pairKey(pair)]).length;
    $("review-count").textContent = `${reviewed} of ${data.pairs.length} reviewed`;
  }

  // ---- one transport for both players -------------------------------------------------------

  class SyncPlayer {
    // Picture by seek, sound by play. The clock is the one audio element that plays: the source the
    // reviewer listens to. Both videos stay paused. Whenever the clock nears another frame, both
    // are sought to that frame's centre ((n + 0.5) / fps: never a boundary that rounding could put
    // on either side) and, once both have presented that frame and the clock has reached it, both
    // are drawn onto their canvases in one callback. So the two pictures always show the same
    // frame index, playing or at rest; a machine too slow to seek every frame skips frames, both
    // pictures alike. The review proxies are all-intra, so a seek decodes one frame.
    constructor(pair) {
      this.fps = pair.fps[0] / pair.fps[1];
      this.frameCount = pair.frame_count;
      this.videos = [$("original"), $("dub")];
      this.canvases = [$("original-picture"), $("dub-picture")];
      this.clock = null;  // the audio element that plays and is heard
      this.shown = null;  // the frame both pictures show (null before the first is drawn)
      this.sought = null;  // the frame both videos are sought to, not yet drawn
      this.seeking = false;  // both videos are being sought
      this.seekSeconds = 0.03;  // how long a pair of seeks takes (running mean): how far ahead to seek
      this.presented = new Map();  // video -> the frame it has presented (requestVideoFrameCallback)
      this.playing = false;
      this.listeners = [];
      for (const video of this.videos) this.watchFrames(video);
      for (const node of [...this.videos, ...document.querySelectorAll("#pair-view audio")]) {
        this.on(node, "error", () => this.failed(node));
      }
      // The clock ends only when not looping: the pictures rest on the last frame.
      for (const node of document.querySelectorAll("#pair-view audio")) {
        this.on(node, "ended", () => { if (node === this.clock) this.pause(); });
      }
    }

    on(node, type, handler) {
      node.addEventListener(type, handler);
      this.listeners.push(() => node.removeEventListener(type, handler));
    }

    failed(node) {
      if (this.closed || !node.getAttribute("src")) return;
      this.pause();
      $("frame-readout").textContent = `cannot play ${node.getAttribute("src")}: ${node.error.message || "unreadable"}`;
    }

    frameAt(seconds) {
      const frame = Math.floor(seconds * this.fps + 1e-6);
      if (this.clock.loop) return ((frame % this.frameCount) + this.frameCount) % this.frameCount;
      return Math.min(this.frameCount - 1, Math.max(0, frame));
    }

    reached(frame, now) {
      // Whether the clock, in frame `now`, has reached `frame` (across a loop's wrap too).
      return (now - frame + this.frameCount) % this.frameCount < this.frameCount / 2;
    }

    update() {
      // Draw the sought frame once it is due; then seek the next one: at rest the clock's frame,
      // playing the frame the clock will be in when the seeks are done.
      if (this.closed) return;
      const now = this.frameAt(this.clock.currentTime);
      if (this.sought !== null && (!this.playing || this.reached(this.sought, now))) {
        this.canvases.forEach((canvas, index) => draw(canvas, this.videos[index]));
        this.shown = this.sought;
        this.sought = null;
        this.changed();
      }
      if (this.seeking || this.sought !== null) return;
      const next = this.playing ? this.frameAt(this.clock.currentTime + this.seekSeconds) : now;
      if (next !== this.shown) this.seek(next);
    }

    async seek(frame) {
      this.seeking = true;
      const started = performance.now();
      await Promise.all(this.videos.map((video) => this.seekVideo(video, frame)));
      this.seekSeconds += 0.2 * ((performance.now() - started) / 1000 - this.seekSeconds);
      this.seeking = false;
      this.sought = frame;
      this.update();
    }

    async seekVideo(video, frame) {
      // Done once `video` has presented `frame`: `seeked` alone may come before the new frame is
      // there to draw (seen on a loaded machine). A video already showing the frame is not sought:
      // it would present nothing new.
      if (video.readyState === HTMLMediaElement.HAVE_NOTHING) await once(video, "loadedmetadata");
      if (this.presented.get(video) !== frame) {
        const sought = once(video, "seeked");
        video.currentTime = (frame + 0.5) / this.fps;
        await sought;
      }
      while (this.presented.get(video) !== frame && !this.closed) {
        const metadata = await nextVideoFrame(video);
        this.presented.set(video, Math.round(metadata.mediaTime * this.fps));
      }
    }

    watchFrames(video) {
      const tick = (now, metadata) => {
        if (this.closed) return;
        this.presented.set(video, Math.round(metadata.mediaTime * this.fps));
        video.requestVideoFrameCallback(tick);
      };
      video.requestVideoFrameCallback(tick);
    }

    tick() {
      if (!this.playing || this.closed) return;
      this.update();
      requestAnimationFrame(() => this.tick());
    }

    seekFrame(frame) {
      // At rest: the clock on the frame's centre, both pictures to that frame.
      const target = Math.min(this.frameCount - 1, Math.max(0, frame));
      this.clock.currentTime = (target + 0.5) / this.fps;
      this.update();
      this.changed();
    }

    play() {
      if (this.frame() >= this.frameCount - 1) this.seekFrame(0);
      this.playing = true;
      this.clock.currentTime = this.frame() / this.fps;  // from the start of the frame shown
      this.changed();
      this.tick();
      this.startClock();
    }

    async startClock() {
      try {
        await this.clock.play();
      } catch (error) {
        // A pause during the start interrupts play() (AbortError): that is not a failure.
        if (error.name !== "AbortError") {
          this.pause();
          $("frame-readout").textContent = `cannot play: ${error.message}`;
        }
      }
    }

    pause() {
      this.playing = false;
      this.clock.pause();
      this.seekFrame(this.frame());  // both pictures rest on the frame the clock stands in
    }

    frame() {
      // The frame at rest: where the clock stands (the pictures follow it).
      return this.frameAt(this.clock.currentTime);
    }

    toggle() {
      if (this.playing) this.pause(); else this.play();
    }

    step(delta) {
      if (this.playing) this.pause();
      this.seekFrame(this.frame() + delta);
    }

    setLoop(loop) {
      this.clock.loop = loop;  // looping is the clock's own: it wraps without a gap
    }

    listen(choice) {
      // The chosen source becomes the clock, at the clock's position; only the clock plays.
      const next = $(`audio-${choice}`);
      if (next === this.clock) return;
      if (this.clock) {
        this.clock.pause();
        next.currentTime = this.clock.currentTime;
      }
      this.clock = next;
      this.clock.loop = $("loop").checked;
      if (this.playing) this.startClock();
    }

    changed() {
      const frame = this.shown === null ? this.frame() : this.shown;
      $("frame-readout").textContent = `frame ${frame + 1} / ${this.frameCount}`;
      $("scrub").value = frame;
      $("play").textContent = this.playing ? "Pause" : "Play";
      showSubtitle((frame + 0.5) / this.fps);
      drawLevels(frame);
    }

    close() {
      this.closed = true;
      this.playing = false;
      for (const remove of this.listeners) remove();
      if (this.clock) this.clock.pause();
    }
  }

  function draw(canvas, video) {
    if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
    }
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  }

  function nextVideoFrame(video) {
    // Resolves with the metadata of the next frame `video` presents.
    return new Promise((resolve) => video.requestVideoFrameCallback((now, metadata) => resolve(metadata)));
  }

  function once(node, type) {
    return new Promise((resolve) => node.addEventListener(type, resolve, { once: true }));
  }

  // ---- pair view ------------------------------------------------------------------------------

  let current = null;

  function openPair(pair) {
    current = pair;
    $("pair-title").textContent = `${pair.shot_id} · ${pair.language} · take ${pair.take}` +
      (pair.dialogue_supplied ? " · supplied dialogue" : "");
    $("pair-script").textContent = pair.script;
    $("original").src = pair.original;
    $("dub").src = pair.dub;
    for (const option of $("listen").options) {
      const node = $(`audio-${option.value}`);
      if (pair.audio[option.value]) node.src = pair.audio[option.value]; else node.removeAttribute("src");
      option.hidden = !pair.audio[option.value];
    }
    $("scrub").max = pair.frame_count - 1;
    player = new SyncPlayer(pair);
    if (!pair.audio[$("listen").value]) $("listen").value = "new_mix";
    player.listen($("listen").value);
    player.seekFrame(0);
    renderVerdict();
    renderHistory();
    renderQc(pair);
    $("qc-summary").href = pair.qc_summary;
  }

  function closePair() {
    if (player) player.close();
    player = null;
    current = null;
  }

  function showSubtitle(seconds) {
    const ms = seconds * 1000;
    const cue = current.cues.find((c) => c.start_ms <= ms && ms < c.end_ms);
    $("subtitle").textContent = cue ? cue.text : "";
  }

  function drawLevels(frame) {
    const canvas = $("levels");
    const context = canvas.getContext("2d");
    const { width, height } = canvas;
    const floor = -70;
    context.clearRect(0, 0, width, height);
    const x = (index) => (index + 0.5) * width / current.frame_count;
    const y = (db) => height - (Math.max(floor, db) - floor) / -floor * (height - 8) - 4;
    for (const [name, colour] of [["original_dialogue", "#8b949e"], ["new_dialogue", "#58a6ff"]]) {
      context.strokeStyle = colour;
      context.lineWidth = 1.5;
      context.beginPath();
      current.levels[name].forEach((db, index) => (index ? context.lineTo(x(index), y(db)) : context.moveTo(x(index), y(db))));
      context.stroke();
    }
    context.strokeStyle = "#f0f6fc";
    context.beginPath();
    context.moveTo(x(frame), 0);
    context.lineTo(x(frame), height);
    context.stroke();
  }

  function renderQc(pair) {
    $("qc-verdict").textContent = pair.qc.status;
    $("qc-verdict").className = pair.qc.passed ? "pass" : "fail";
    const body = document.querySelector("#qc tbody");
    body.replaceChildren();
    const checks = [...pair.qc.checks].sort((a, b) => Number(a.passed) - Number(b.passed));
    for (const check of checks) {
      const row = element("tr");
      row.append(element("td", check.passed ? "PASS" : "FAIL", check.passed ? "pass" : "fail"),
        element("td", check.name), element("td", check.measured), element("td", check.expected));
      body.append(row);
    }
  }

  function renderVerdict() {
    const verdict = verdicts[pairKey(current)];
    $("note").value = verdict ? verdict.note : "";
    $("new-script").value = verdict ? verdict.new_script : "";
    $("verdict-state").textContent = verdict ? verdict.verdict : "not reviewed";
    $("verdict-state").className = verdict ? verdict.verdict : "";
  }

  function renderHistory() {
    const box = $("history");
    box.replaceChildren();
    if (!current.history.length) return;
    box.append(element("h3", "earlier takes"));
    const list = element("ul");
    for (const take of current.history) {
      list.append(element("li", `take ${take.take} (${take.run_id}): ${take.verdict}` +
        (take.note ? ` — ${take.note}` : "") + (take.new_script ? ` — new line: ${take.new_script}` : "")));
    }
    box.append(list);
  }

  function setVerdict(verdict) {
    verdicts[pairKey(current)] = { verdict, note: $("note").value, new_script: $("new-script").value };
    saveVerdicts();
    renderVerdict();
  }

  function updateNote() {
    const verdict = verdicts[pairKey(current)];
    if (!verdict) return;
    verdict.note = $("note").value;
    verdict.new_script = $("new-script").value;
    saveVerdicts();
  }

  // ---- review file ----------------------------------------------------------------------------

  function reviewDocument() {
    const reviews = data.pairs.filter((pair) => verdicts[pairKey(pair)]).map((pair) => {
      const verdict = verdicts[pairKey(pair)];
      return { shot_id: pair.shot_id, language: pair.language, take: pair.take, verdict: verdict.verdict,
        note: verdict.note, script: pair.script, new_script: verdict.verdict === "rejected" ? verdict.new_script : "",
        run_id: data.run_id };
    });
    return { format: data.format, run_id: data.run_id, reviews };
  }

  function exportReview() {
    const blob = new Blob([JSON.stringify(reviewDocument(), null, 1)], { type: "application/json" });
    const link = Object.assign(document.createElement("a"),
      { href: URL.createObjectURL(blob), download: `review_${data.run_id}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  // ---- routing --------------------------------------------------------------------------------

  function route() {
    const match = location.hash.match(/^#pair\/([^/]+)\/([^/]+)$/);
    const pair = match && data.pairs.find((p) => p.shot_id === decodeURIComponent(match[1]) &&
      p.language === decodeURIComponent(match[2]) && p.status === "delivered");
    closePair();
    $("index-view").hidden = Boolean(pair);
    $("pair-view").hidden = !pair;
    if (pair) openPair(pair); else renderIndex();
  }

  function start() {
    $("run-id").textContent = `${data.run_id} · ${data.profile.name} profile`;
    if (data.profile.random_weights) {
      $("noise-banner").hidden = false;
      $("noise-banner").textContent = data.profile.notice ||
        `Random-weight models (${data.profile.name} profile): the dubbed pictures and voices are noise.`;
    }
    $("export").addEventListener("click", exportReview);
    $("play").addEventListener("click", () => player.toggle());
    $("step-back").addEventListener("click", () => player.step(-1));
    $("step-forward").addEventListener("click", () => player.step(1));
    $("scrub").addEventListener("input", () => { if (player.playing) player.pause(); player.seekFrame(Number($("scrub").value)); });
    $("listen").addEventListener("change", () => player.listen($("listen").value));
    $("loop").addEventListener("change", () => player.setLoop($("loop").checked));
    $("approve").addEventListener("click", () => setVerdict("approved"));
    $("reject").addEventListener("click", () => setVerdict("rejected"));
    $("note").addEventListener("input", updateNote);
    $("new-script").addEventListener("input", updateNote);
    $("levels").addEventListener("click", (event) => {
      const box = $("levels").getBoundingClientRect();
      player.step(0);
      player.seekFrame(Math.floor((event.clientX - box.left) / box.width * current.frame_count));
    });
    document.addEventListener("keydown", (event) => {
      if (!player || event.target.tagName === "INPUT") return;
      if (event.key === " ") { event.preventDefault(); player.toggle(); }
      if (event.key === ",") player.step(-1);
      if (event.key === ".") player.step(1);
    });
    window.addEventListener("hashchange", route);
    renderCount();
    route();
  }

  start();
})();
