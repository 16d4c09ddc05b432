// Signs and verifies with the providers' official npm packages, for generate.py.
// Reads one JSON request {op, ...} on stdin, prints {"result": ...}.
// Time-dependent verifiers get the vector's fixed "now" by setting Date.now for the call.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);

const input = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (c) => (data += c));
  process.stdin.on("end", () => resolve(data));
}));

function at(nowSeconds, fn) {
  const real = Date.now;
  Date.now = () => nowSeconds * 1000;
  const RealDate = Date;
  // `new Date()` without arguments, as the Paddle SDK uses it.
  globalThis.Date = class extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(nowSeconds * 1000);
      else super(...args);
    }
    static now() { return nowSeconds * 1000; }
  };
  const restore = () => { globalThis.Date = RealDate; RealDate.now = real; };
  try {
    const r = fn();
    if (r && typeof r.then === "function") return r.finally(restore);
    restore();
    return r;
  } catch (e) { restore(); throw e; }
}

async function run(req) {
  switch (req.op) {
    case "stripe_sign": {
      const Stripe = require("stripe");
      const stripe = new Stripe("sk_test_vectors");
      return stripe.webhooks.generateTestHeaderString({
        payload: req.payload, secret: req.secret, timestamp: req.timestamp,
      });
    }
    case "stripe_verify": {
      const Stripe = require("stripe");
      const stripe = new Stripe("sk_test_vectors");
      try {
        stripe.webhooks.constructEvent(req.payload, req.header, req.secret, 300, undefined, req.now);
        return true;
      } catch (e) { return false; }
    }
    case "github_sign": {
      const { sign } = await import("@octokit/webhooks-methods");
      return await sign(req.secret, req.payload);
    }
    case "github_verify": {
      const { verify } = await import("@octokit/webhooks-methods");
      try { return await verify(req.secret, req.payload, req.signature); } catch (e) { return false; }
    }
    case "linear_verify": {
      const { LinearWebhooks } = await import("@linear/sdk");
      return at(req.now, () => {
        try { return new LinearWebhooks(req.secret).verify(Buffer.from(req.body), req.signature); }
        catch (e) { return false; }
      });
    }
    case "paddle_verify": {
      const { Paddle } = require("@paddle/paddle-node-sdk");
      const paddle = new Paddle("pdl_sdbx_apikey_vectors"); // sets up the Node runtime (crypto)
      return await at(req.now, async () => {
        try { return await paddle.webhooks.isSignatureValid(req.body, req.secret, req.header); }
        catch (e) { return false; }
      });
    }
    case "discord_verify": {
      const { verifyKey } = require("discord-interactions");
      try { return await verifyKey(Buffer.from(req.body), req.signature, req.timestamp, req.key); }
      catch (e) { return false; }
    }
    case "sendgrid_verify": {
      const { EventWebhook } = require("@sendgrid/eventwebhook");
      const ew = new EventWebhook();
      try {
        const key = ew.convertPublicKeyToECDSA(req.key);
        return ew.verifySignature(key, req.body, req.signature, req.timestamp);
      } catch (e) { return false; }
    }
    case "versions": {
      const out = {};
      const fs = await import("node:fs");
      for (const name of req.names) {
        const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
        out[name] = JSON.parse(fs.readFileSync(url, "utf8")).version;
      }
      return out;
    }
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

process.stdout.write(JSON.stringify({ result: await run(input) }));
