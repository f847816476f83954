"""The adaptive onboarding questionnaire as one self-contained web page (``GET /onboarding``).

Inline CSS and a small vanilla script, nothing from another host, so it works offline and tells no third
party that the service exists (as :mod:`metarec.serve.docs_page`). Its Content-Security-Policy lets the
browser enforce that: only this page's own script and style (by hash) run, and it may talk to this
service only. The script asks ``GET v1/onboarding`` for the first items, ``POST v1/onboarding`` for each
next round (adapted to what the person knew) and ``POST v1/recommend`` for the top 10. Paths are
relative, so the page also works behind a proxy that mounts the service under a prefix.

The page is static: the same bytes for every model of one kind of feedback (stars for a rating model, "know
/ like" for an implicit one), no titles, schema or model version in it. That is why
it is public while ``/docs`` (this model's schema) is behind the key, and it has to be: a browser cannot
add a header to a plain navigation, so a keyed page could never be opened to type the key into. Every
call its script makes sends the key (header ``X-API-Key``) and is checked like any other client's.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass

ROUND_SIZE = 10
TOP_K = 10

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1f2328}
main{max-width:46rem;margin:0 auto;padding:1.5rem 1rem 3rem}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .6rem}
p.lead{color:#555;margin:.2rem 0 1rem}
.bar{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap;background:#fff;border:1px solid #dde1e6;
 border-radius:8px;padding:.6rem .8rem}
.bar label{font-size:.9rem;color:#444}
input[type=password]{font:inherit;padding:.35rem .5rem;border:1px solid #c7ccd3;border-radius:6px;width:14rem}
button{font:inherit;cursor:pointer;border-radius:6px;border:1px solid #c7ccd3;background:#fff;padding:.4rem .8rem}
button.primary{background:#2b59c3;border-color:#2b59c3;color:#fff}
button:disabled{opacity:.5;cursor:default}
#message{margin:.8rem 0;padding:.6rem .8rem;border-radius:6px;display:none}
#message.error{display:block;background:#fdecea;border:1px solid #f5c2c0;color:#8a1c14}
#message.info{display:block;background:#eef3fc;border:1px solid #c9d7f2;color:#1d3f8f}
ul.items{list-style:none;padding:0;margin:0}
li.item{display:flex;justify-content:space-between;align-items:center;gap:.8rem;background:#fff;
 border:1px solid #dde1e6;border-radius:8px;padding:.55rem .8rem;margin:.35rem 0}
li.item.known{border-color:#2b59c3;box-shadow:0 0 0 1px #2b59c3 inset}
.title{font-weight:600}.meta{color:#666;font-size:.85rem}
.controls{display:flex;align-items:center;gap:.6rem;white-space:nowrap}
.controls label{font-size:.85rem;color:#444}
button.star{border:none;background:none;padding:0 .05rem;font-size:1.35rem;line-height:1;color:#c9ced6}
button.star.on{color:#f0a500}
.actions{display:flex;gap:.6rem;margin-top:.9rem;flex-wrap:wrap}
#summary{color:#444;font-size:.9rem;margin:.6rem 0 0}
ol#recs{padding-left:1.6rem;margin:0}
ol#recs li{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:.5rem .8rem;margin:.35rem 0}
.row{display:flex;justify-content:space-between;gap:1rem;align-items:baseline}
.score{font-variant-numeric:tabular-nums;color:#2b59c3;font-weight:600}
footer{color:#888;font-size:.8rem;margin-top:2rem}
"""

SCRIPT = """
"use strict";
const ROUND = __ROUND__, TOP_K = __TOP_K__, KEY_HEADER = __KEY_HEADER__, IMPLICIT = __IMPLICIT__;
const $ = (id) => document.getElementById(id);
const state = {scale: [1, 5], shown: [], items: {}, known: new Set(), ratings: new Map(), round: 0};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // never innerHTML: titles come from the catalogue
  return e;
}
function say(text, kind) { const m = $("message"); m.textContent = text || ""; m.className = text ? kind : ""; }

function describe(status, data) {
  const d = data && data.detail;
  const text = Array.isArray(d) ? d.map((e) => (e.loc || []).join(".") + ": " + e.msg).join("; ")
                                : (d ? String(d) : "");
  if (status === 401) return "The service needs an API key (sent as the " + KEY_HEADER +
                             " header): enter it above and press Start. (" + (text || "401") + ")";
  if (status === 422) return "The service refused the request (422): " + text;
  return "The request failed (" + status + ")" + (text ? ": " + text : "");
}

async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  const key = $("key").value.trim();
  if (key) headers[KEY_HEADER] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    throw new Error("Could not reach the service: " + err.message);
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) throw new Error(describe(response.status, data));
  if (data && data.model_version) $("version").textContent = "model " + data.model_version;
  return data;
}

function starValue(i) {  // five steps over the model's rating scale (1..5 for MovieLens)
  const [low, high] = state.scale;
  return Math.round((low + (i - 1) * (high - low) / 4) * 100) / 100;
}

function setRating(li, id, value) {
  if (value === null) state.ratings.delete(id); else state.ratings.set(id, value);
  li.querySelectorAll("button.star").forEach((b) => {
    const on = value !== null && Number(b.dataset.value) <= value;
    b.classList.toggle("on", on);
    b.setAttribute("aria-pressed", String(value !== null && Number(b.dataset.value) === value));
  });
}
function setKnown(li, id, known) {
  if (known) state.known.add(id); else { state.known.delete(id); setRating(li, id, null); }
  li.classList.toggle("known", known);
  li.querySelector("input.known").checked = known;
  summarise();
}

function itemRow(item) {
  const id = item.item_id, li = el("li", "item");
  li.dataset.itemId = id;
  const text = el("div");
  text.append(el("div", "title", item.title || id));
  const meta = [item.year, (item.genres || []).join(", ")].filter((x) => x !== undefined && x !== null && x !== "");
  text.append(el("div", "meta", meta.join(" · ")));
  const controls = el("div", "controls"), label = el("label"), box = el("input", "known");
  box.type = "checkbox";
  box.addEventListener("change", () => setKnown(li, id, box.checked));
  label.append(box, IMPLICIT ? " know / like it" : " seen it");
  controls.append(label);
  li.append(text, controls);
  if (IMPLICIT) return li;  // a marked item is a positive: no rating to give
  const stars = el("span", "stars");
  for (let i = 1; i <= 5; i++) {
    const b = el("button", "star", "\\u2605");
    b.type = "button"; b.dataset.value = String(starValue(i));
    b.setAttribute("aria-label", "rate " + starValue(i)); b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => { setKnown(li, id, true); setRating(li, id, starValue(i)); summarise(); });
    stars.append(b);
  }
  controls.append(stars);
  return li;
}

function showRound(items) {
  state.round += 1;
  const list = $("items");
  list.replaceChildren(...items.map(itemRow));
  items.forEach((item) => { state.shown.push(item.item_id); state.items[item.item_id] = item; });
  $("round").textContent = "Round " + state.round + (IMPLICIT ? ": do you know or like these?" : ": do you know these?");
  $("ask").hidden = false;
  summarise();
  if (!items.length) say("No more items to ask about: show your recommendations.", "info");
}

function summarise() {
  const rated = state.ratings.size, known = state.known.size;
  $("summary").textContent = !state.round ? "" : IMPLICIT ? "So far: " + state.shown.length + " shown, " + known +
    " known or liked." : "So far: " + state.shown.length + " shown, " + known + " seen, " + rated + " rated.";
  $("recommend").disabled = (IMPLICIT ? known : rated) === 0;
}

async function busy(button, work) {
  button.disabled = true;
  say("");
  try { await work(); } catch (err) { say(err.message, "error"); } finally { button.disabled = false; summarise(); }
}

async function start() {
  const model = await api("GET", "v1/model");
  if (model && Array.isArray(model.rating_scale)) state.scale = model.rating_scale;
  Object.assign(state, {shown: [], items: {}, known: new Set(), ratings: new Map(), round: 0});
  $("results").hidden = true;
  const first = await api("GET", "v1/onboarding?n=" + ROUND);
  showRound(first.items);
}

async function nextRound() {
  const answer = await api("POST", "v1/onboarding", {n: ROUND, shown: state.shown, rated: [...state.known]});
  showRound(answer.items);
}

async function recommend() {
  const ratings = [...state.ratings].map(([item_id, rating]) => ({item_id, rating})), items = [...state.known];
  if (!(IMPLICIT ? items : ratings).length) throw new Error(IMPLICIT ? "Mark at least one item first." :
                                                            "Rate at least one item first.");
  const answer = await api("POST", "v1/recommend", __RECOMMEND_BODY__);
  const recs = $("recs");
  recs.replaceChildren(...answer.items.map((item) => {
    const li = el("li"), row = el("div", "row"), text = el("div");
    text.append(el("div", "title", item.title || item.item_id));
    const meta = [item.year, (item.genres || []).join(", ")].filter((x) => x !== undefined && x !== null && x !== "");
    text.append(el("div", "meta", meta.join(" · ")));
    row.append(text, el("span", "score", item.score.toFixed(2)));
    li.dataset.itemId = item.item_id;
    li.append(row);
    return li;
  }));
  $("results").hidden = false;
  $("results").scrollIntoView({block: "start"});
}

$("keyform").addEventListener("submit", (event) => { event.preventDefault(); busy($("start"), start); });
$("next").addEventListener("click", () => busy($("next"), nextRound));
$("recommend").addEventListener("click", () => busy($("recommend"), recommend));
busy($("start"), start);
"""

BODY = """<main>
<h1>__HEADING__</h1>
<p class="lead">__LEAD__ each round adapts to your answers. Then ask for
your recommendations.</p>
<form id="keyform" class="bar"><label for="key">API key</label><input id="key" type="password"
 autocomplete="off" placeholder="only if the service needs one"><button id="start" type="submit">Start</button></form>
<div id="message" role="alert"></div>
<noscript><p>This page needs JavaScript; the API reference is at <a href="docs">docs</a>.</p></noscript>
<section id="results" hidden>
<h2>Your top __TOP_K__ <span class="meta">(__SCORE__)</span></h2>
<ol id="recs"></ol>
</section>
<section id="ask" hidden>
<h2 id="round"></h2>
<ul id="items" class="items"></ul>
<div class="actions"><button id="next" type="button">Next round</button>
<button id="recommend" type="button" class="primary" disabled>Show my recommendations</button></div>
<p id="summary"></p>
</section>
<footer>metarec · <a href="docs">API reference</a> · <span id="version"></span></footer>
</main>"""


EXPLICIT_WORDS = {"__HEADING__": "What have you seen?", "__LEAD__": "Mark the items you know and rate them;",
                  "__SCORE__": "predicted rating"}
IMPLICIT_WORDS = {"__HEADING__": "Which of these do you know or like?",
                  "__LEAD__": "Mark the items you know or like (no rating needed);", "__SCORE__": "score"}


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@dataclass(frozen=True)
class Page:
    """The page's HTML and the headers to send with it (its CSP names the inline script and style by hash)."""

    html: str
    headers: dict[str, str]


def render_onboarding(api_key_header: str = "X-API-Key", implicit: bool = False) -> Page:
    """The questionnaire page, sending the key in ``api_key_header``; built once per app. ``implicit``: the
    model learned from implicit feedback, so the page asks which items the person knows or likes (each a
    positive, no stars) and sends them as ``items``; the page then differs by that one choice, still no data."""
    body_literal = "{items, k: TOP_K, exclude_rated: true}" if implicit else "{ratings, k: TOP_K, exclude_rated: true}"
    script = (SCRIPT.replace("__ROUND__", str(ROUND_SIZE)).replace("__TOP_K__", str(TOP_K))
              .replace("__KEY_HEADER__", json.dumps(api_key_header)).replace("__IMPLICIT__", json.dumps(implicit))
              .replace("__RECOMMEND_BODY__", body_literal))
    words = (IMPLICIT_WORDS if implicit else EXPLICIT_WORDS).items()
    body = BODY.replace("__TOP_K__", str(TOP_K))
    for placeholder, text in words:
        body = body.replace(placeholder, text)
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape('metarec · onboarding')}</title><link rel='icon' href='data:,'>"
            f"<style>{STYLE}</style></head><body>{body}<script>{script}</script></body></html>")
    csp = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(STYLE)}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return Page(page, {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                       "Referrer-Policy": "no-referrer"})
