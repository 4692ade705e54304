// The ingest peer of benches/webhook_load.rs: what most GitHub bots are built on,
// @octokit/webhooks, verifying and parsing each delivery (stored nowhere) behind Node's http
// server. scripts/bench/webhooks installs the package and copies this file next to it.
// Environment: PORT, SECRET.
import http from "node:http";
import { Webhooks } from "@octokit/webhooks";

const webhooks = new Webhooks({ secret: process.env.SECRET });
webhooks.on("pull_request", () => {});
const server = http.createServer((req, res) => {
  if (req.method === "GET") { res.writeHead(200); res.end("ok"); return; }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    try {
      await webhooks.verifyAndReceive({
        id: req.headers["x-github-delivery"],
        name: req.headers["x-github-event"],
        signature: req.headers["x-hub-signature-256"],
        payload: Buffer.concat(chunks).toString("utf8"),
      });
      res.writeHead(202, { "content-type": "application/json" });
      res.end('{"status":"queued"}');
    } catch (e) {
      res.writeHead(400);
      res.end(String(e.message || e));
    }
  });
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.env.PORT), "127.0.0.1");
