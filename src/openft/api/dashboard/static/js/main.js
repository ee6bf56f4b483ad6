// Entry point: asks for the key once, then shows the view the URL's #fragment names.
//   #/jobs             the jobs list            (jobs.js)
//   #/jobs/<id>        one job: chart, events…  (job.js)
//   #/upload           drag-and-drop upload     (upload.js)
//   #/playground?…     base vs fine-tuned       (playground.js)
//   #/evals            the evals list           (evals.js)
//   #/evals/<id>?a=&b= one eval's runs side by side, two runs item by item (eval.js, compare.js)

import { ApiError, dashboardConfig, get, key, setUnauthorizedHandler } from "./api.js";
import { errorBox, h, replace } from "./dom.js";
import { evalView } from "./eval.js";
import { evalsView } from "./evals.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { playgroundView } from "./playground.js";
import { uploadView } from "./upload.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let config = null;
let dispose = null; // the current view's clean-up (stops its polling)

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query) };
}

function loginView(message) {
  nav.hidden = true;
  const input = h("input", {
    id: "api-key",
    type: "password",
    placeholder: "sk-openft-…",
    autocomplete: "off",
    size: 48,
  });
  const status = h("div", { id: "login-status" }, message ? errorBox(message) : null);
  const submit = async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    if (!candidate) return;
    try {
      await get("/models", { apiKey: candidate });
      key.set(candidate);
      render();
    } catch (error) {
      const text =
        error instanceof ApiError && error.status === 401
          ? "That key was refused (401 invalid_api_key). Use the key the server printed, kept in DATA_DIR/api_key."
          : `Could not reach the server: ${error.message}`;
      replace(status, errorBox(text));
    }
  };
  return h(
    "section",
    { class: "card login" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste the API key once; this browser keeps it (localStorage) until you choose “Forget key”."),
    h("form", { onsubmit: submit }, input, " ", h("button", { type: "submit", id: "login" }, "Sign in")),
    status,
  );
}

async function render() {
  if (dispose) dispose();
  dispose = null;
  if (!key.get()) {
    replace(view, loginView());
    return;
  }
  nav.hidden = false;
  const { parts, params } = parseHash();
  const name = parts[0] || "jobs";
  for (const link of nav.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === name);
  try {
    config = config || (await dashboardConfig());
    let shown;
    if (name === "jobs" && parts[1]) shown = jobView(decodeURIComponent(parts[1]), config);
    else if (name === "upload") shown = uploadView(params);
    else if (name === "playground") shown = playgroundView(params);
    else if (name === "evals" && parts[1]) shown = evalView(decodeURIComponent(parts[1]), params);
    else if (name === "evals") shown = evalsView();
    else shown = jobsView(config);
    replace(view, shown.node);
    dispose = shown.dispose || null;
  } catch (error) {
    replace(view, errorBox(error.message));
  }
}

setUnauthorizedHandler((message) => {
  key.clear();
  if (dispose) dispose();
  dispose = null;
  replace(view, loginView(`The server refused the key: ${message}`));
});

document.getElementById("logout").addEventListener("click", () => {
  key.clear();
  render();
});
window.addEventListener("hashchange", render);
render();
