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
    // The dub is the clock; the original and the stem players follow it. Positions are frame
    // centres ((n + 0.5) / fps), so a seek never lands on a frame boundary that rounding could
    // put on either side.
    constructor(pair) {
      this.fps = pair.fps[0] / pair.fps[1];
      this.frameCount = pair.frame_count;
      this.master = $("dub");
      this.followers = [$("original"), ...Object.keys(pair.audio).map((name) => $(`audio-${name}`))];
      this.media = [this.master, ...this.followers];
      this.presented = new Map();  // video -> frame index last presented (requestVideoFrameCallback)
      this.playing = false;
      this.listeners = [];
      this.on(this.master, "ended", () => this.ended());
      for (const video of [this.master, $("original")]) this.watchFrames(video);
      for (const node of this.media) this.on(node, "seeked", () => this.changed());
    }

    on(node, type, handler) {
      node.addEventListener(type, handler);
      this.listeners.push(() => node.removeEventListener(type, handler));
    }

    watchFrames(video) {
      const tick = (now, metadata) => {
        if (this.closed) return;
        this.presented.set(video, Math.round(metadata.mediaTime * this.fps));
        if (video === this.master && this.playing) this.follow();
        this.changed();
        video.requestVideoFrameCallback(tick);
      };
      video.requestVideoFrameCallback(tick);
    }

    frame() {
      return Math.min(this.frameCount - 1, Math.max(0, Math.floor(this.master.currentTime * this.fps + 1e-6)));
    }

    seekFrame(frame) {
      const target = Math.min(this.frameCount - 1, Math.max(0, frame));
      const time = (target + 0.5) / this.fps;
      for (const node of this.media) node.currentTime = time;
      this.changed();
    }

    async play() {
      if (this.frame() >= this.frameCount - 1) this.seekFrame(0);
      this.playing = true;
      this.changed();
      await this.startTogether();
    }

    async startTogether() {
      // Every follower seeks to the master's position first, then all start in the same turn.
      const time = this.master.currentTime;
      await Promise.all(this.followers.map((node) => seekTo(node, time)));
      if (!this.playing || this.closed) return;
      const results = await Promise.all(this.media.map((node) => {
        node.playbackRate = 1;
        return node.play().then(() => null, (error) => error);
      }));
      // A pause during the start interrupts play() (AbortError): that is not a failure.
      const failure = results.find((error) => error && error.name !== "AbortError");
      if (failure) {
        this.pause();
        $("frame-readout").textContent = `cannot play: ${failure.message}`;
      }
      this.changed();
    }

    pause() {
      this.playing = false;
      for (const node of this.media) node.pause();
      for (const node of this.media) node.playbackRate = 1;
      this.seekFrame(this.frame());  // both players come to rest on the same frame
    }

    toggle() {
      if (this.playing) this.pause(); else this.play();
    }

    step(delta) {
      if (this.playing) this.pause();
      this.seekFrame(this.frame() + delta);
    }

    follow() {
      // A drift under one frame is taken out by running the follower up to 25 % faster or slower
      // until it is within a tenth of a frame; a follower further off (its decoder stalled, on a
      // busy machine) makes every player stop on the master's frame and start again together.
      if (this.resyncing) return;
      const clock = this.master.currentTime;
      for (const node of this.followers) {
        if (node.paused || !node.src) continue;
        const drift = node.currentTime - clock;
        if (Math.abs(drift) > 1 / this.fps) {
          this.resync();
          return;
        }
        node.playbackRate = Math.abs(drift) > 0.1 / this.fps ? 1 - Math.max(-0.25, Math.min(0.25, drift * 4)) : 1;
      }
    }

    async resync() {
      this.resyncing = true;
      for (const node of this.media) node.pause();
      await this.startTogether();
      this.resyncing = false;
    }

    ended() {
      if ($("loop").checked) {
        this.seekFrame(0);
        this.play();
      } else {
        this.pause();
      }
    }

    listen(choice) {
      const sources = { new_mix: this.master, original_mix: $("original"), new_dialogue: $("audio-new_dialogue"),
        me: $("audio-me"), generated_dialogue: $("audio-generated_dialogue") };
      for (const node of Object.values(sources)) node.muted = true;
      sources[choice].muted = false;
    }

    changed() {
      const frame = this.frame();
      const original = this.presented.get($("original"));
      const dub = this.presented.get(this.master);
      $("frame-readout").textContent = `frame ${frame + 1} / ${this.frameCount}` +
        (dub !== undefined && original !== undefined ? ` · shown: dub ${dub + 1}, original ${original + 1}` : "");
      $("scrub").value = frame;
      $("play").textContent = this.playing ? "Pause" : "Play";
      showSubtitle(this.master.currentTime);
      drawLevels(frame);
    }

    close() {
      this.closed = true;
      this.playing = false;
      for (const remove of this.listeners) remove();
      for (const node of this.media) node.pause();
    }
  }

  function seekTo(node, time) {
    // Resolves once `node` has finished seeking to `time` (at once when it has no source).
    if (!node.src) return Promise.resolve();
    return new Promise((resolve) => {
      node.addEventListener("seeked", resolve, { once: true });
      node.currentTime = time;
    });
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
    for (const name of ["new_dialogue", "generated_dialogue", "me"]) {
      const node = $(`audio-${name}`);
      if (pair.audio[name]) node.src = pair.audio[name]; else node.removeAttribute("src");
      $("listen").querySelector(`option[value=${name}]`).hidden = !pair.audio[name];
    }
    $("scrub").max = pair.frame_count - 1;
    player = new SyncPlayer(pair);
    const choice = $("listen").value;
    player.listen(pair.audio[choice] || choice.endsWith("_mix") ? choice : "new_mix");
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
