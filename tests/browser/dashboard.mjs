// The dashboard in a real headless browser (Debian's chromium, driven by playwright-core):
// what a person does in their first hour, a screenshot of every page, axe-core on every page.
// Run by tests/browser.rs, which starts endor and reads the JSON this prints.
// Input (environment): ENDOR_BASE, ENDOR_GATEWAY (host:port), ENDOR_LOGIN, ENDOR_PASSWORD,
// ENDOR_GIT_URL, ENDOR_PAYLOAD (a pull_request payload file), ENDOR_SHOTS (a folder),
// ENDOR_MODULES (node_modules with playwright-core and axe-core).
import { createRequire } from "node:module";
import { createHmac } from "node:crypto";
import { readFileSync, mkdirSync } from "node:fs";
import http from "node:http";
import path from "node:path";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const base = env("ENDOR_BASE");
const shots = env("ENDOR_SHOTS");
const modules = env("ENDOR_MODULES");
const require = createRequire(path.join(modules, "index.js"));
const { chromium } = require("playwright-core");
const axePath = require.resolve("axe-core/axe.min.js");
mkdirSync(shots, { recursive: true });

const pages = [];
const steps = [];
const step = (s) => { steps.push(s); process.stderr.write(`[browser] ${s}\n`); };
const fail = (why) => { throw new Error(why); };

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
// axe is injected by the test; the pages' own policy allows only their own scripts.
const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const offsite = [];
page.on("request", (r) => { const u = new URL(r.url()); if (!["127.0.0.1", "localhost"].includes(u.hostname)) offsite.push(r.url()); });

// A screenshot of the page `p` shows, and what axe-core finds on it.
async function check(name, p = page) {
  await p.waitForLoadState("load");
  const file = path.join(shots, `${String(pages.length + 1).padStart(2, "0")}-${name}.png`);
  await p.screenshot({ path: file, fullPage: true });
  await p.addScriptTag({ path: axePath });
  const result = await p.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const violations = result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  pages.push({ name, url: p.url(), screenshot: file, violations });
}

async function submit(formSelector) {
  await Promise.all([page.waitForNavigation(), page.locator(`${formSelector} button[type=submit]`).first().click()]);
}

function post(url, body, headers) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: "POST", headers }, (res) => {
      res.resume(); res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function visitPreview(site, urlPath) {
  const [host, port] = env("ENDOR_GATEWAY").split(":");
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path: urlPath, headers: { Host: `${site}.preview.localhost` } }, (res) => {
      let body = ""; res.on("data", (c) => (body += c)); res.on("end", () => resolve([res.statusCode, body]));
    });
    req.on("error", reject);
    req.end();
  });
}

try {
  // Sign in: a signed-out visitor is sent to the sign-in page.
  await page.goto(base + "/");
  if (!page.url().includes("/sign-in")) fail(`not sent to sign in: ${page.url()}`);
  await check("sign-in");
  await page.fill("#login", env("ENDOR_LOGIN"));
  await page.fill("#password", env("ENDOR_PASSWORD"));
  await submit("form[action='/sign-in']");
  if (new URL(page.url()).pathname !== "/") fail(`sign-in went to ${page.url()}`);
  if (!(await page.textContent("main")).includes("acme")) fail("the workspace is not listed");
  await check("workspaces");
  step("signed in");

  // Connect a repository: the webhook URL and the secret, shown once.
  await page.goto(base + "/w/acme/repositories");
  await check("repositories");
  await page.selectOption("#forge", "github");
  await page.fill("#repo", "octo/shop");
  await page.fill("#git_url", env("ENDOR_GIT_URL"));
  await submit("form[action='/w/acme/repositories']");
  const secret = await page.inputValue("#hook-secret");
  const hookUrl = await page.inputValue("#hook-url");
  if (secret.length < 16 || !hookUrl.includes("/webhooks/github/")) fail("no webhook secret shown");
  await check("repository-connected");
  step("connected octo/shop");
  await page.goto(base + "/w/acme/repositories");
  await Promise.all([page.waitForNavigation(), page.locator("tbody a", { hasText: "octo/shop" }).first().click()]);
  if ((await page.content()).includes(secret)) fail("the secret was shown twice");
  await check("repository");

  // The forge's webhook, signed with that secret: a preview appears.
  const payload = readFileSync(env("ENDOR_PAYLOAD"));
  const sig = "sha256=" + createHmac("sha256", secret).update(payload).digest("hex");
  const status = await post(hookUrl, payload, { "content-type": "application/json", "x-github-event": "pull_request",
    "x-github-delivery": "browser-" + Date.now(), "x-hub-signature-256": sig });
  if (status !== 202) fail(`webhook answered ${status}`);
  step("webhook accepted");
  let ready = false;
  for (let i = 0; i < 240 && !ready; i++) {
    await page.goto(base + "/w/acme/previews");
    const row = await page.locator("tbody tr", { hasText: "octo/shop#1" }).first().textContent().catch(() => "");
    if (row.includes("failed")) fail(`the preview failed: ${row}`);
    ready = row.includes("ready");
    if (!ready) await page.waitForTimeout(500);
  }
  if (!ready) fail("the preview did not become ready");
  await check("previews");
  await Promise.all([page.waitForNavigation(), page.locator("tbody a", { hasText: "octo/shop#1" }).first().click()]);
  await check("preview");
  const site = (await page.locator("dd a[href^='/s/']").first().textContent()).trim();
  step(`preview ready: ${site}`);

  // Its site page, and its log live: a visit to the preview shows up without a reload.
  await page.goto(base + "/s/" + site);
  await page.waitForFunction(() => document.getElementById("live-state").textContent.startsWith("Live"), null, { timeout: 15000 });
  const [code, body] = await visitPreview(site, "/from-the-browser-test");
  if (code !== 404 && code !== 200) fail(`the preview answered ${code}: ${body}`);
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("/from-the-browser-test"), null, { timeout: 20000 });
  await check("site-live-log");
  step("log followed live");
  await page.selectOption("#extend-by", "72h");
  await submit(`form[action='/s/${site}/extend']`);
  if (!(await page.textContent(".flash")).startsWith("Expires")) fail("the preview was not extended");
  step("preview extended");

  // Create a site, clone it, tag the clone, turn its password on, delete it by its name.
  await page.goto(base + "/w/acme/sites");
  await check("sites");
  await page.fill("#site-name", "shop");
  await submit("form[action='/w/acme/sites'][method='post']");
  if (new URL(page.url()).pathname !== "/s/shop") fail(`create went to ${page.url()}`);
  await check("site-created");
  await page.fill("#clone-name", "shop-copy");
  await submit("form[action='/s/shop/clone']");
  if (new URL(page.url()).pathname !== "/s/shop-copy") fail(`clone went to ${page.url()}`);
  await page.fill("#new-tag", "review");
  await submit("form[action='/s/shop-copy/tags']");
  if (!(await page.locator("ul.tags").textContent()).includes("review")) fail("the tag is not shown");
  await page.check("input[name=password][value=generate]");
  await submit("form[action='/s/shop-copy/access']");
  if (!(await page.textContent("main")).includes("Password: on")) fail("the password is not on");
  await check("clone-tagged-with-password");
  step("cloned, tagged, password on");
  await page.fill("#confirm", "shop-cop");
  await submit("form[action='/s/shop-copy/delete']");
  if (!(await page.textContent("main")).includes("Nothing was deleted")) fail("a mistyped name deleted something");
  await page.fill("#confirm", "shop-copy");
  await submit("form[action='/s/shop-copy/delete']");
  if (new URL(page.url()).pathname !== "/w/acme/sites") fail(`delete went to ${page.url()}`);
  if (!(await page.textContent("main")).includes("Site shop-copy deleted.")) fail("no word of the deletion");
  await check("site-deleted");
  step("deleted by typing its name");

  for (const [name, url] of [["members", "/w/acme/members"], ["usage", "/w/acme/usage"],
    ["notifications", "/notifications"], ["settings", "/settings"]]) {
    await page.goto(base + url);
    await check(name);
  }
  if (!(await page.goto(base + "/notifications"), await page.textContent("main")).includes("is ready")) fail("no notification of the ready preview");
  // An invitation, its link, and an API token: pages shown once.
  await page.goto(base + "/w/acme/members");
  await page.fill("#invite-email", "newcomer@example.com");
  await submit("form[action='/w/acme/invitations']");
  const link = await page.inputValue("#secret");
  await check("invitation-made");
  await page.goto(link);
  await check("invitation");
  await page.goto(base + "/settings");
  await page.fill("#token-name", "ci");
  await submit("form[action='/settings/tokens']");
  if (!(await page.inputValue("#secret")).startsWith("endor_")) fail("no token shown");
  await check("token-issued");
  // The unsubscribe link of a mail, opened signed out.
  const signedOut = await browser.newContext({ bypassCSP: true });
  const other = await signedOut.newPage();
  await other.goto(env("ENDOR_UNSUBSCRIBE"));
  await check("unsubscribe", other);
  await Promise.all([other.waitForNavigation(), other.locator("main button[type=submit]").click()]);
  if (!(await other.textContent("main")).includes("No more mails of this kind")) fail("unsubscribe did not say so");
  await signedOut.close();
  // A page the user may not see says why.
  await page.goto(base + "/w/other/sites");
  await check("refused");
} catch (e) {
  try { await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }); } catch (_) {}
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), url: page.url(), steps, pages, offsite }));
  await browser.close();
  process.exit(1);
}
console.log(JSON.stringify({ ok: true, steps, pages, offsite }));
await browser.close();
